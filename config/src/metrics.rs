//! `[metrics]`: the Prometheus endpoint ([`MetricsConfig`]).

use crate::error::{invalid, ConfigError};
use serde::{Deserialize, Serialize};
use std::net::SocketAddr;

/// `[metrics]`: an opt-in HTTP endpoint serving `GET /metrics` in the Prometheus text format.
#[derive(Debug, Clone, Serialize, Deserialize, PartialEq, Default)]
#[serde(default, deny_unknown_fields)]
pub struct MetricsConfig {
    /// `IP:PORT` the endpoint listens on; empty (the default) turns it off. Port 0 picks a free
    /// port (the node logs the bound address). A loopback address (`127.0.0.1:9615`, `[::1]:9615`)
    /// unless `allow_remote` is set.
    pub listen: String,
    /// Allow a `listen` address other than loopback. The endpoint has no authentication: only
    /// for a scraper on a private network, behind a firewall.
    pub allow_remote: bool,
    /// Also serve a live dashboard page at `/` (loss curve, scores and weights per miner over
    /// windows, peers, sync progress; one self-contained page, no CDN) on the same address.
    pub dashboard: bool,
}

impl MetricsConfig {
    /// The address to listen on; `None` when the endpoint is off or `listen` is not an
    /// `IP:PORT` (which [`MetricsConfig::validate`] refuses).
    pub fn listen_addr(&self) -> Option<SocketAddr> {
        let listen = self.listen.trim();
        if listen.is_empty() {
            return None;
        }
        listen.parse().ok()
    }

    /// Checks the `[metrics]` keys on their own; the error names the key (`metrics.*`).
    pub fn validate(&self) -> Result<(), ConfigError> {
        let listen = self.listen.trim();
        if listen.is_empty() {
            return Ok(());
        }
        let Ok(addr) = listen.parse::<SocketAddr>() else {
            return invalid(
                "metrics.listen",
                format!(
                    "`{listen}` is not an IP:PORT; use e.g. 127.0.0.1:9615, or \"\" to turn the \
                     endpoint off"
                ),
            );
        };
        if !addr.ip().is_loopback() && !self.allow_remote {
            return invalid(
                "metrics.listen",
                format!(
                    "`{addr}` is not a loopback address and the endpoint has no authentication; \
                     use 127.0.0.1:{port}, or set metrics.allow_remote = true to serve it beyond \
                     this machine (behind a firewall)",
                    port = addr.port()
                ),
            );
        }
        Ok(())
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::error::test_util::assert_invalid;

    fn listen(addr: &str) -> MetricsConfig {
        MetricsConfig {
            listen: addr.into(),
            ..MetricsConfig::default()
        }
    }

    #[test]
    fn off_by_default() {
        let m = MetricsConfig::default();
        m.validate().expect("defaults valid");
        assert_eq!(m.listen_addr(), None);
    }

    #[test]
    fn loopback_addresses_are_accepted() {
        for a in [
            "127.0.0.1:9615",
            "127.0.0.1:0",
            "[::1]:9615",
            "127.3.2.1:80",
        ] {
            let m = listen(a);
            m.validate().unwrap_or_else(|e| panic!("{a}: {e}"));
            assert_eq!(m.listen_addr(), a.parse().ok(), "{a}");
        }
    }

    #[test]
    fn a_bad_listen_address_names_its_key() {
        for a in [
            "localhost:9615",
            "127.0.0.1",
            ":9615",
            "/ip4/127.0.0.1/tcp/9615",
        ] {
            assert_invalid(listen(a).validate(), "metrics.listen");
        }
    }

    #[test]
    fn a_remote_address_needs_allow_remote() {
        for a in ["0.0.0.0:9615", "10.0.0.5:9615", "[::]:9615"] {
            let err = listen(a).validate().expect_err(a);
            assert_eq!(err.key(), Some("metrics.listen"), "{err}");
            assert!(err.to_string().contains("metrics.allow_remote"), "{err}");
            let m = MetricsConfig {
                allow_remote: true,
                ..listen(a)
            };
            m.validate().unwrap_or_else(|e| panic!("{a}: {e}"));
        }
    }
}
