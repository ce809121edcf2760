//! Parsing one admin request line: pure (no I/O, no node state), so the fuzz target
//! `fuzz/fuzz_targets/admin_request.rs` compiles this very file and feeds it arbitrary bytes.
//!
//! Dependencies: `serde`, `serde_json` and `thiserror` only (the fuzz crate includes the file
//! by path instead of depending on the whole daemon).

use serde::{Deserialize, Serialize};

/// Longest request line accepted, in bytes (the trailing newline included).
pub const MAX_LINE: usize = 64 * 1024;

/// A request.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct Request {
    /// Command name.
    pub cmd: String,
    /// Optional limit for list commands.
    #[serde(default)]
    pub limit: Option<usize>,
    /// `export`: the directory to write the Hugging Face model into (absolute, or relative to
    /// the node's working directory).
    #[serde(default)]
    pub path: Option<String>,
    /// `export`: `f32` (default, bit-exact) or `bf16`.
    #[serde(default)]
    pub dtype: Option<String>,
    /// `unban`: the peer id whose ban to lift.
    #[serde(default)]
    pub peer: Option<String>,
    /// `compete_submit`: the competition's id (`path` is the model directory).
    #[serde(default)]
    pub competition: Option<String>,
}

/// Why a request line was refused.
#[derive(Debug, thiserror::Error)]
pub enum RequestError {
    /// The line is longer than [`MAX_LINE`].
    #[error("request longer than {max} bytes")]
    TooLong {
        /// The line's length.
        len: usize,
        /// [`MAX_LINE`].
        max: usize,
    },
    /// The line is not one JSON request object.
    #[error("malformed request: {0}; send e.g. {{\"cmd\":\"status\"}}")]
    Malformed(#[from] serde_json::Error),
}

/// Parses one request line (a JSON object; surrounding whitespace and the newline allowed).
/// Never panics; anything but a well-formed request is an error.
pub fn parse_request(line: &[u8]) -> Result<Request, RequestError> {
    if line.len() > MAX_LINE {
        return Err(RequestError::TooLong {
            len: line.len(),
            max: MAX_LINE,
        });
    }
    Ok(serde_json::from_slice(line)?)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn parses_requests_and_refuses_the_rest() {
        let r = parse_request(b"{\"cmd\":\"windows\",\"limit\":3}\n").expect("valid");
        assert_eq!(r.cmd, "windows");
        assert_eq!(r.limit, Some(3));
        for bad in [
            &b""[..],
            b"\n",
            b"{\"cmd\":1}",
            b"{\"cmd\":\"status\",\"bogus\":1}",
            b"{\"cmd\":\"status\",\"limit\":-1}",
            b"{\"cmd\":\"status\"} {}",
        ] {
            assert!(
                matches!(parse_request(bad), Err(RequestError::Malformed(_))),
                "{bad:?}"
            );
        }
        // serde also reads a struct from a JSON array of its fields, in order.
        assert_eq!(
            parse_request(b"[\"status\"]").expect("array form").cmd,
            "status"
        );
        let long = vec![b' '; MAX_LINE + 1];
        assert!(matches!(
            parse_request(&long),
            Err(RequestError::TooLong { .. })
        ));
    }
}
