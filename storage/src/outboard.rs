//! Verified ranges of a blob: its blake3 tree cut at groups of `2^k` bytes (the first step of
//! verified streaming, the `bao` / iroh-blobs way, with blake3's own tree).
//!
//! A blob's id is the blake3 root of its bytes. blake3 hashes 1 KiB chunks into a
//! left-balanced binary tree, so every aligned group of `2^k` bytes (k ≥ 10; the last group
//! may be short) is one subtree with its own chaining value. The [`Outboard`] is the list of
//! those values: 32 bytes per group (8 KiB for 256 MiB in 1 MiB groups). A downloader
//!
//! 1. gets the outboard from any peer and checks it against the id ([`Outboard::verify`]: the
//!    group values merged up the tree must give the root), then
//! 2. checks each group as it arrives ([`Outboard::verify_group`]): a bad range is caught when
//!    it arrives, not after the whole blob, and can be fetched again from another provider.
//!
//! A blob of one group or less has no outboard to speak of: its id checks it whole.

use blake3::hazmat::{
    left_subtree_len, merge_subtrees_non_root, merge_subtrees_root, ChainingValue, HasherExt, Mode,
};

/// Smallest group: one blake3 chunk (1 KiB).
pub const MIN_GROUP_LOG: u8 = 10;
/// Largest group accepted: 256 MiB.
pub const MAX_GROUP_LOG: u8 = 28;
/// The group size the store keeps big blobs in, and the one the network protocol uses: 1 MiB.
/// A blob of more than `2^PART_LOG` bytes is stored as one part per group (see
/// [`crate::Store::put_part`]), so any byte range is served by reading only the parts that
/// cover it.
pub const PART_LOG: u8 = 20;

/// Bytes of [`Outboard::encode`]'s header: the length (u64 LE) and the group size's log2.
const HEADER: usize = 9;

/// Why an outboard or a group does not check out.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum OutboardError {
    /// The group size is outside `2^10 ..= 2^28`.
    #[error("group size 2^{0} is outside 2^10..=2^28 bytes")]
    GroupSize(u8),
    /// The outboard lists another number of groups than the blob's length needs.
    #[error(
        "{got} group hashes for a {len}-byte blob in groups of 2^{group_log} (expected {expected})"
    )]
    Count {
        /// Groups listed.
        got: usize,
        /// Groups the length needs.
        expected: u64,
        /// The blob's length.
        len: u64,
        /// The group size's log2.
        group_log: u8,
    },
    /// The group hashes do not merge to the blob's id: the outboard is wrong (or for another
    /// blob); fetch it from another peer.
    #[error("the group hashes do not merge to the blob's id")]
    Root,
    /// A group's bytes do not hash to the outboard's value for it: that peer sent bad bytes.
    #[error("group {index} ({len} bytes) does not match its hash; fetch it from another peer")]
    Group {
        /// The group.
        index: u64,
        /// Bytes received.
        len: usize,
    },
    /// Encoded outboard bytes are malformed (short, or not a whole number of group hashes).
    #[error("malformed outboard encoding: {0}; fetch the outboard again")]
    Encoding(String),
}

/// A blob's group hashes (see the module docs).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Outboard {
    /// The blob's length in bytes.
    pub len: u64,
    /// log2 of the group size.
    pub group_log: u8,
    /// One chaining value per group, in order (empty when the blob is one group or less).
    pub cvs: Vec<[u8; 32]>,
}

impl Outboard {
    /// The outboard of `bytes` in groups of `2^group_log` bytes.
    pub fn compute(bytes: &[u8], group_log: u8) -> Result<Outboard, OutboardError> {
        check_group_log(group_log)?;
        let len = bytes.len() as u64;
        let g = 1usize << group_log;
        let cvs = if len <= g as u64 {
            Vec::new()
        } else {
            bytes
                .chunks(g)
                .enumerate()
                .map(|(i, group)| group_cv(i as u64 * g as u64, group))
                .collect()
        };
        Ok(Outboard {
            len,
            group_log,
            cvs,
        })
    }

    /// The outboard of a blob of one group or less (`len <= 2^group_log`): no group hashes,
    /// the id checks the bytes whole. For a longer `len` the result does not verify.
    pub fn small(len: u64, group_log: u8) -> Outboard {
        Outboard {
            len,
            group_log,
            cvs: Vec::new(),
        }
    }

    /// Fixed layout: `len` (u64 little-endian), `group_log` (u8), then the 32-byte group
    /// hashes in order. [`Outboard::decode`] reads it back.
    pub fn encode(&self) -> Vec<u8> {
        let mut out = Vec::with_capacity(HEADER + 32 * self.cvs.len());
        out.extend_from_slice(&self.len.to_le_bytes());
        out.push(self.group_log);
        for cv in &self.cvs {
            out.extend_from_slice(cv);
        }
        out
    }

    /// Reads [`Outboard::encode`]'s layout. Refuses short or trailing bytes, a group size
    /// outside `2^10..=2^28`, and a number of group hashes the length does not need (so a
    /// decoded outboard is well-formed; [`Outboard::verify`] still checks it against the id).
    pub fn decode(bytes: &[u8]) -> Result<Outboard, OutboardError> {
        let Some((len, rest)) = bytes.split_first_chunk::<8>() else {
            return Err(OutboardError::Encoding(format!(
                "{} bytes, shorter than the {HEADER}-byte header",
                bytes.len()
            )));
        };
        let Some((&group_log, cv_bytes)) = rest.split_first() else {
            return Err(OutboardError::Encoding(format!(
                "{} bytes, shorter than the {HEADER}-byte header",
                bytes.len()
            )));
        };
        check_group_log(group_log)?;
        let len = u64::from_le_bytes(*len);
        if cv_bytes.len() % 32 != 0 {
            return Err(OutboardError::Encoding(format!(
                "{} bytes of group hashes, not a multiple of 32",
                cv_bytes.len()
            )));
        }
        let got = cv_bytes.len() / 32;
        // One group has no hashes; more need exactly one per group. Checked before
        // allocating, so the count is bounded by the input's size.
        let expected = if len <= 1u64 << group_log {
            0
        } else {
            groups(len, group_log)
        };
        if got as u64 != expected {
            return Err(OutboardError::Count {
                got,
                expected,
                len,
                group_log,
            });
        }
        let cvs = cv_bytes
            .chunks_exact(32)
            .map(|c| {
                let mut cv = [0u8; 32];
                cv.copy_from_slice(c);
                cv
            })
            .collect();
        Ok(Outboard {
            len,
            group_log,
            cvs,
        })
    }

    /// The blob's id merged from the group hashes, without the bytes: `None` for a blob of one
    /// group (its id is the hash of its bytes) or a wrong number of group hashes. Lets a writer
    /// that computes the outboard get the id without hashing the blob a second time.
    pub(crate) fn merged_root(&self) -> Option<[u8; 32]> {
        if check_group_log(self.group_log).is_err()
            || self.len <= 1u64 << self.group_log
            || self.cvs.len() as u64 != self.groups()
        {
            return None;
        }
        Some(*self.root().as_bytes())
    }

    /// Groups the blob has (at least 1).
    pub fn groups(&self) -> u64 {
        groups(self.len, self.group_log)
    }

    /// Byte range `(offset, len)` of group `index`, or `None` past the end.
    pub fn group_range(&self, index: u64) -> Option<(u64, u64)> {
        let g = 1u64 << self.group_log;
        let start = index.checked_mul(g)?;
        (index < self.groups()).then(|| (start, g.min(self.len - start.min(self.len))))
    }

    /// Checks the group hashes against the blob's id: they must merge up blake3's tree to it.
    pub fn verify(&self, id: &[u8; 32]) -> Result<(), OutboardError> {
        check_group_log(self.group_log)?;
        let expected = self.groups();
        if self.len <= 1u64 << self.group_log {
            // One group: nothing to merge, the id checks the bytes.
            return if self.cvs.is_empty() {
                Ok(())
            } else {
                Err(self.count_error(expected))
            };
        }
        if self.cvs.len() as u64 != expected {
            return Err(self.count_error(expected));
        }
        let root = self.root();
        (root.as_bytes() == id)
            .then_some(())
            .ok_or(OutboardError::Root)
    }

    /// Checks the bytes of group `index` as they arrive. For a blob of one group, `id` is the
    /// check (the bytes must be the whole blob).
    pub fn verify_group(
        &self,
        id: &[u8; 32],
        index: u64,
        bytes: &[u8],
    ) -> Result<(), OutboardError> {
        let bad = || OutboardError::Group {
            index,
            len: bytes.len(),
        };
        let (offset, len) = self.group_range(index).ok_or_else(bad)?;
        if bytes.len() as u64 != len {
            return Err(bad());
        }
        if self.cvs.is_empty() {
            return (blake3::hash(bytes).as_bytes() == id)
                .then_some(())
                .ok_or_else(bad);
        }
        let cv = self.cvs.get(index as usize).ok_or_else(bad)?;
        (group_cv(offset, bytes) == *cv)
            .then_some(())
            .ok_or_else(bad)
    }

    fn count_error(&self, expected: u64) -> OutboardError {
        OutboardError::Count {
            got: self.cvs.len(),
            expected,
            len: self.len,
            group_log: self.group_log,
        }
    }

    /// The root over all groups (more than one).
    fn root(&self) -> blake3::Hash {
        let g = 1u64 << self.group_log;
        let (left, right) = split(&self.cvs, self.len, g);
        merge_subtrees_root(
            &subtree(left.0, left.1, g),
            &subtree(right.0, right.1, g),
            Mode::Hash,
        )
    }
}

fn check_group_log(group_log: u8) -> Result<(), OutboardError> {
    if (MIN_GROUP_LOG..=MAX_GROUP_LOG).contains(&group_log) {
        Ok(())
    } else {
        Err(OutboardError::GroupSize(group_log))
    }
}

fn groups(len: u64, group_log: u8) -> u64 {
    len.div_ceil(1u64 << group_log).max(1)
}

/// The chaining value of one group starting at `offset` (a multiple of its size).
fn group_cv(offset: u64, bytes: &[u8]) -> ChainingValue {
    let mut h = blake3::Hasher::new();
    h.set_input_offset(offset);
    h.update(bytes);
    h.finalize_non_root()
}

/// Splits a subtree of `len` bytes (more than one group) where blake3 does: its left child
/// covers `left_subtree_len(len)` bytes, a whole number of groups since groups are aligned
/// powers of two.
/// Group hashes of a subtree and its length in bytes.
type Sub<'a> = (&'a [ChainingValue], u64);

fn split(cvs: &[ChainingValue], len: u64, g: u64) -> (Sub<'_>, Sub<'_>) {
    let left_len = left_subtree_len(len);
    let left_groups = (left_len / g) as usize;
    let (l, r) = cvs.split_at(left_groups.min(cvs.len()));
    ((l, left_len), (r, len - left_len))
}

/// The chaining value of a non-root subtree of `len` bytes over `cvs`.
fn subtree(cvs: &[ChainingValue], len: u64, g: u64) -> ChainingValue {
    if cvs.len() <= 1 {
        return cvs.first().copied().unwrap_or([0; 32]);
    }
    let (left, right) = split(cvs, len, g);
    merge_subtrees_non_root(
        &subtree(left.0, left.1, g),
        &subtree(right.0, right.1, g),
        Mode::Hash,
    )
}

#[cfg(test)]
mod tests {
    use super::*;

    fn blob(len: usize) -> Vec<u8> {
        (0..len).map(|i| (i * 31 + i / 7) as u8).collect()
    }

    #[test]
    fn group_hashes_merge_to_the_blake3_id_at_every_shape() {
        for group_log in [10u8, 12] {
            let g = 1usize << group_log;
            for len in [
                0,
                1,
                g - 1,
                g,
                g + 1,
                2 * g,
                3 * g + 17,
                4 * g,
                5 * g - 1,
                7 * g + g / 2,
                8 * g,
                13 * g + 1,
            ] {
                let b = blob(len);
                let id = *blake3::hash(&b).as_bytes();
                let ob = Outboard::compute(&b, group_log).expect("compute");
                assert_eq!(ob.groups(), groups(len as u64, group_log));
                ob.verify(&id)
                    .unwrap_or_else(|e| panic!("len {len} g {g}: {e}"));
                for i in 0..ob.groups() {
                    let (off, n) = ob.group_range(i).expect("range");
                    let part = &b[off as usize..(off + n) as usize];
                    ob.verify_group(&id, i, part).expect("group verifies");
                }
                assert!(ob.group_range(ob.groups()).is_none());
            }
        }
    }

    #[test]
    fn a_bad_byte_is_caught_at_its_group_and_only_there() {
        let group_log = 10;
        let b = blob(9 * 1024 + 100);
        let id = *blake3::hash(&b).as_bytes();
        let ob = Outboard::compute(&b, group_log).expect("compute");
        let mut bad = b.clone();
        bad[5 * 1024 + 3] ^= 1;
        for i in 0..ob.groups() {
            let (off, n) = ob.group_range(i).expect("range");
            let part = &bad[off as usize..(off + n) as usize];
            let r = ob.verify_group(&id, i, part);
            if i == 5 {
                assert_eq!(
                    r,
                    Err(OutboardError::Group {
                        index: 5,
                        len: 1024
                    })
                );
            } else {
                assert!(r.is_ok(), "group {i}");
            }
        }
        // Short or long group bytes, and groups past the end, are refused.
        assert!(ob.verify_group(&id, 0, &b[..1000]).is_err());
        assert!(ob.verify_group(&id, 99, &b[..1024]).is_err());
    }

    #[test]
    fn a_wrong_outboard_is_refused_against_the_id() {
        let b = blob(6 * 1024);
        let id = *blake3::hash(&b).as_bytes();
        let ob = Outboard::compute(&b, 10).expect("compute");
        let mut swapped = ob.clone();
        swapped.cvs.swap(1, 2);
        assert_eq!(swapped.verify(&id), Err(OutboardError::Root));
        let mut short = ob.clone();
        short.cvs.pop();
        assert!(matches!(
            short.verify(&id),
            Err(OutboardError::Count { .. })
        ));
        let other = *blake3::hash(b"another blob").as_bytes();
        assert_eq!(ob.merged_root(), Some(id));
        assert_eq!(swapped.merged_root().map(|r| r == id), Some(false));
        assert_eq!(short.merged_root(), None);
        assert_eq!(ob.verify(&other), Err(OutboardError::Root));
        assert_eq!(
            Outboard::compute(&b, 9).map(|_| ()),
            Err(OutboardError::GroupSize(9))
        );
        // One group: the id checks the bytes whole.
        let small = blob(700);
        let sid = *blake3::hash(&small).as_bytes();
        let sob = Outboard::compute(&small, 10).expect("compute");
        assert!(sob.cvs.is_empty());
        sob.verify(&sid).expect("trivially");
        sob.verify_group(&sid, 0, &small).expect("whole");
        assert!(sob.verify_group(&sid, 0, &blob(699)).is_err());
    }

    #[test]
    fn encoding_round_trips_and_refuses_malformed_bytes() {
        for (len, group_log) in [(0usize, 10u8), (700, 10), (1024, 10), (9 * 1024 + 5, 10)] {
            let b = blob(len);
            let ob = Outboard::compute(&b, group_log).expect("compute");
            let enc = ob.encode();
            assert_eq!(enc.len(), HEADER + 32 * ob.cvs.len());
            assert_eq!(Outboard::decode(&enc), Ok(ob.clone()));
            // Every truncation and one trailing byte are refused.
            for cut in 0..enc.len() {
                assert!(
                    Outboard::decode(&enc[..cut]).is_err(),
                    "len {len} cut {cut}"
                );
            }
            let mut long = enc.clone();
            long.push(0);
            assert!(Outboard::decode(&long).is_err());
            // A whole extra hash: the count no longer matches the length.
            long.extend_from_slice(&[0; 31]);
            assert!(matches!(
                Outboard::decode(&long),
                Err(OutboardError::Count { .. })
            ));
        }
        assert_eq!(
            Outboard::small(100, PART_LOG).encode()[8],
            PART_LOG,
            "group size after the length"
        );
        // A bad group size, a huge length with no hashes, garbage: errors, never a panic.
        let mut bad = Outboard::small(5, 10).encode();
        bad[8] = 200;
        assert_eq!(Outboard::decode(&bad), Err(OutboardError::GroupSize(200)));
        let mut huge = Outboard::small(5, 10).encode();
        huge[..8].copy_from_slice(&u64::MAX.to_le_bytes());
        assert!(matches!(
            Outboard::decode(&huge),
            Err(OutboardError::Count { .. })
        ));
        let mut x = 0x9e37_79b9_7f4a_7c15u64;
        for n in 0..400usize {
            let garbage: Vec<u8> = (0..n)
                .map(|_| {
                    x ^= x << 13;
                    x ^= x >> 7;
                    x ^= x << 17;
                    x as u8
                })
                .collect();
            if let Ok(ob) = Outboard::decode(&garbage) {
                assert_eq!(ob.encode(), garbage, "only canonical bytes decode");
            }
        }
    }
}
