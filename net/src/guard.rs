//! Peer discipline, kept out of the event loop so it is plain, testable arithmetic: strikes
//! that decay, timed bans, and per-peer token buckets that meter blob serving.
//!
//! Every misbehaviour the loop sees (a gossip message that fails a check or the application's
//! admission, bytes that do not match their id, blob requests past the meter) is a *strike*
//! with a weight. Strikes halve every `strike_half_life`; a peer whose strikes reach
//! `ban_after` is banned for `ban_duration`: the loop blocks it (its connections close and new
//! ones are refused) and gossipsub blacklists it. Bans expire on their own and can be lifted
//! by the operator (`apiary admin unban`).

use libp2p::PeerId;
use std::collections::HashMap;
use std::time::{Duration, Instant};

/// Limits of [`Guard`].
#[derive(Debug, Clone, Copy, PartialEq)]
pub struct GuardConfig {
    /// Gossipsub peer scoring, strikes and bans on (off: misbehaviour is only counted).
    pub scoring: bool,
    /// Strikes at which a peer is banned.
    pub ban_after: f64,
    /// How long a ban lasts.
    pub ban_duration: Duration,
    /// Strikes halve every this long.
    pub strike_half_life: Duration,
    /// Blob requests a peer may make in a burst.
    pub serve_burst: f64,
    /// Blob requests per second a peer's bucket refills.
    pub serve_per_sec: f64,
    /// Blob lookups served at once, all peers together.
    pub max_concurrent_serves: usize,
    /// Share of `max_concurrent_serves` that peers not known as subnet members may take
    /// (0..=1); the rest is kept for members. A member is a peer that published gossip the
    /// application admitted from a registered hotkey within [`MEMBER_TTL`].
    pub unregistered_share: f64,
}

/// How long a peer counts as a member after its last admitted gossip.
pub(crate) const MEMBER_TTL: Duration = Duration::from_secs(3600);

impl Default for GuardConfig {
    fn default() -> Self {
        GuardConfig {
            scoring: true,
            ban_after: 20.0,
            ban_duration: Duration::from_secs(600),
            strike_half_life: Duration::from_secs(60),
            serve_burst: 64.0,
            serve_per_sec: 16.0,
            max_concurrent_serves: 32,
            unregistered_share: 0.5,
        }
    }
}

/// A ban in force.
#[derive(Debug, Clone, PartialEq)]
pub struct Ban {
    /// When it ends.
    pub until: Instant,
    /// What the peer did last before it.
    pub reason: String,
}

/// A peer's strikes and request bucket.
#[derive(Debug, Clone, Copy)]
struct Record {
    strikes: f64,
    tokens: f64,
    at: Instant,
}

/// The state.
#[derive(Debug)]
pub(crate) struct Guard {
    cfg: GuardConfig,
    peers: HashMap<PeerId, Record>,
    bans: HashMap<PeerId, Ban>,
    /// Peers that published admitted gossip, and when they last did.
    members: HashMap<PeerId, Instant>,
}

impl Guard {
    pub(crate) fn new(cfg: GuardConfig) -> Guard {
        Guard {
            cfg,
            peers: HashMap::new(),
            bans: HashMap::new(),
            members: HashMap::new(),
        }
    }

    pub(crate) fn config(&self) -> &GuardConfig {
        &self.cfg
    }

    /// The peer's record, decayed and refilled to `now`.
    fn record(&mut self, peer: PeerId, now: Instant) -> &mut Record {
        let cfg = self.cfg;
        let r = self.peers.entry(peer).or_insert(Record {
            strikes: 0.0,
            tokens: cfg.serve_burst,
            at: now,
        });
        let dt = now.saturating_duration_since(r.at).as_secs_f64();
        let half = cfg.strike_half_life.as_secs_f64().max(1e-3);
        r.strikes *= 0.5f64.powf(dt / half);
        r.tokens = (r.tokens + dt * cfg.serve_per_sec).min(cfg.serve_burst);
        r.at = now;
        r
    }

    /// Adds a strike of `weight`; returns the new ban if this one crossed the threshold.
    pub(crate) fn strike(
        &mut self,
        peer: PeerId,
        weight: f64,
        reason: &str,
        now: Instant,
    ) -> Option<Ban> {
        if !self.cfg.scoring || self.is_banned(&peer, now) {
            return None;
        }
        let ban_after = self.cfg.ban_after;
        let r = self.record(peer, now);
        r.strikes += weight.max(0.0);
        if r.strikes < ban_after {
            return None;
        }
        r.strikes = 0.0;
        Some(self.ban(peer, reason, now))
    }

    /// Bans `peer` for the configured duration.
    pub(crate) fn ban(&mut self, peer: PeerId, reason: &str, now: Instant) -> Ban {
        let ban = Ban {
            until: now + self.cfg.ban_duration,
            reason: reason.to_string(),
        };
        self.bans.insert(peer, ban.clone());
        ban
    }

    pub(crate) fn is_banned(&self, peer: &PeerId, now: Instant) -> bool {
        self.bans.get(peer).is_some_and(|b| b.until > now)
    }

    /// Lifts a ban; whether there was one.
    pub(crate) fn unban(&mut self, peer: &PeerId) -> bool {
        self.peers.remove(peer);
        self.bans.remove(peer).is_some()
    }

    /// Removes the bans that ended; returns their peers.
    pub(crate) fn expire(&mut self, now: Instant) -> Vec<PeerId> {
        let ended: Vec<PeerId> = self
            .bans
            .iter()
            .filter(|(_, b)| b.until <= now)
            .map(|(p, _)| *p)
            .collect();
        for p in &ended {
            self.bans.remove(p);
        }
        self.members
            .retain(|_, at| now.saturating_duration_since(*at) < MEMBER_TTL);
        // Forget quiet peers with no strikes left.
        let half = self.cfg.strike_half_life;
        self.peers
            .retain(|_, r| now.saturating_duration_since(r.at) < half * 8 || r.strikes > 0.01);
        ended
    }

    /// The bans in force.
    pub(crate) fn bans(&self, now: Instant) -> Vec<(PeerId, Ban)> {
        let mut v: Vec<(PeerId, Ban)> = self
            .bans
            .iter()
            .filter(|(_, b)| b.until > now)
            .map(|(p, b)| (*p, b.clone()))
            .collect();
        v.sort_by_key(|(p, _)| *p);
        v
    }

    /// The peer's current strikes.
    pub(crate) fn strikes(&mut self, peer: PeerId, now: Instant) -> f64 {
        self.record(peer, now).strikes
    }

    /// Records that `peer` published gossip the application admitted (a registered hotkey).
    pub(crate) fn vouch(&mut self, peer: PeerId, now: Instant) {
        self.members.insert(peer, now);
    }

    /// Whether `peer` counts as a subnet member now.
    pub(crate) fn is_member(&self, peer: &PeerId, now: Instant) -> bool {
        self.members
            .get(peer)
            .is_some_and(|at| now.saturating_duration_since(*at) < MEMBER_TTL)
    }

    /// Whether a new lookup for `peer` fits, with `in_flight` lookups running: members may
    /// fill every slot, other peers only their share, so a crowd of strangers never keeps
    /// the subnet's own nodes from the blobs they need.
    pub(crate) fn has_slot(&self, peer: &PeerId, in_flight: usize, now: Instant) -> bool {
        let max = self.cfg.max_concurrent_serves;
        let limit = if self.is_member(peer, now) {
            max
        } else {
            serve_slots_for_strangers(max, self.cfg.unregistered_share)
        };
        in_flight < limit
    }

    /// Takes one request token from the peer's bucket; false when it is empty.
    pub(crate) fn take_request(&mut self, peer: PeerId, now: Instant) -> bool {
        let r = self.record(peer, now);
        if r.tokens >= 1.0 {
            r.tokens -= 1.0;
            true
        } else {
            false
        }
    }
}

/// Concurrent lookups open to non-members: `floor(max × share)`, share clamped to 0..=1.
pub(crate) fn serve_slots_for_strangers(max: usize, share: f64) -> usize {
    let share = if share.is_finite() {
        share.clamp(0.0, 1.0)
    } else {
        0.0
    };
    ((max as f64) * share).floor() as usize
}

#[cfg(test)]
mod tests {
    use super::*;

    fn cfg() -> GuardConfig {
        GuardConfig {
            scoring: true,
            ban_after: 10.0,
            ban_duration: Duration::from_secs(100),
            strike_half_life: Duration::from_secs(10),
            serve_burst: 4.0,
            serve_per_sec: 2.0,
            max_concurrent_serves: 2,
            unregistered_share: 0.5,
        }
    }

    #[test]
    fn members_may_fill_every_slot_strangers_only_their_share() {
        let mut g = Guard::new(GuardConfig {
            max_concurrent_serves: 8,
            ..cfg()
        });
        let (member, stranger, t0) = (PeerId::random(), PeerId::random(), Instant::now());
        g.vouch(member, t0);
        assert!(g.has_slot(&stranger, 3, t0));
        assert!(!g.has_slot(&stranger, 4, t0), "strangers get 8 × 0.5");
        assert!(g.has_slot(&member, 7, t0));
        assert!(!g.has_slot(&member, 8, t0));
        // Membership lapses after MEMBER_TTL without admitted gossip.
        let later = t0 + MEMBER_TTL;
        assert!(!g.has_slot(&member, 4, later));
        g.expire(later);
        assert!(!g.is_member(&member, t0));
    }

    #[test]
    fn the_strangers_share_is_clamped() {
        assert_eq!(serve_slots_for_strangers(32, 0.5), 16);
        assert_eq!(serve_slots_for_strangers(32, 0.0), 0);
        assert_eq!(serve_slots_for_strangers(32, 2.0), 32);
        assert_eq!(serve_slots_for_strangers(32, f64::NAN), 0);
        assert_eq!(serve_slots_for_strangers(3, 0.5), 1);
    }

    #[test]
    fn strikes_ban_at_the_threshold_and_bans_expire() {
        let mut g = Guard::new(cfg());
        let (p, t0) = (PeerId::random(), Instant::now());
        for _ in 0..9 {
            assert!(g.strike(p, 1.0, "bad", t0).is_none());
        }
        let ban = g.strike(p, 1.0, "bad", t0).expect("10th strike bans");
        assert_eq!(ban.until, t0 + Duration::from_secs(100));
        assert!(g.is_banned(&p, t0 + Duration::from_secs(99)));
        // Strikes while banned change nothing.
        assert!(g.strike(p, 100.0, "bad", t0).is_none());
        assert_eq!(g.bans(t0).len(), 1);
        assert_eq!(g.expire(t0 + Duration::from_secs(100)), vec![p]);
        assert!(!g.is_banned(&p, t0 + Duration::from_secs(100)));
    }

    #[test]
    fn strikes_decay_so_rare_mistakes_never_ban() {
        let mut g = Guard::new(cfg());
        let (p, t0) = (PeerId::random(), Instant::now());
        // One strike every 10 s (the half-life): strikes never exceed 2.
        for i in 0..100u64 {
            assert!(g
                .strike(p, 1.0, "late", t0 + Duration::from_secs(10 * i))
                .is_none());
        }
        let s = g.strikes(p, t0 + Duration::from_secs(990));
        assert!(s <= 2.0 + 1e-9, "{s}");
    }

    #[test]
    fn the_request_bucket_refills_at_its_rate() {
        let mut g = Guard::new(cfg());
        let (p, t0) = (PeerId::random(), Instant::now());
        let taken = (0..10).filter(|_| g.take_request(p, t0)).count();
        assert_eq!(taken, 4, "the burst");
        // 1 s later: 2 more.
        let t1 = t0 + Duration::from_secs(1);
        assert_eq!((0..10).filter(|_| g.take_request(p, t1)).count(), 2);
        // Another peer has its own bucket.
        assert!(g.take_request(PeerId::random(), t1));
    }

    #[test]
    fn unban_lifts_a_ban_and_forgets_strikes() {
        let mut g = Guard::new(cfg());
        let (p, t0) = (PeerId::random(), Instant::now());
        g.ban(p, "operator test", t0);
        assert!(g.unban(&p));
        assert!(!g.is_banned(&p, t0));
        assert!(!g.unban(&p));
        assert_eq!(g.strikes(p, t0), 0.0);
    }
}
