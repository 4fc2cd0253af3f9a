//! `announce_peer` tokens (BEP 5): a keyed hash of the querier's IP and the infohash
//! under a secret that changes every 5 minutes; a token is accepted under the current and
//! the previous secret, so it lives 5 to 10 minutes, only from the IP it was given to and
//! only for the infohash it was asked for (as libtorrent does: one `get_peers` does not
//! open every swarm to an announce).

use std::net::IpAddr;
use std::time::{Duration, Instant};

use rand::Rng;

use super::hash::siphash24;
use super::id::Id;

/// How often the secret changes (BEP 5: "every five minutes").
pub const ROTATE_EVERY: Duration = Duration::from_secs(5 * 60);

/// Length of our tokens. 8 bytes of a keyed PRF: guessing one is a 2^-64 chance.
pub const TOKEN_LEN: usize = 8;

/// Issues and checks tokens.
#[derive(Debug, Clone)]
pub struct Tokens {
    current: [u8; 16],
    previous: [u8; 16],
    next_rotation: Instant,
}

impl Tokens {
    /// Fresh secrets; the first rotation is [`ROTATE_EVERY`] after `now`.
    pub fn new(rng: &mut impl Rng, now: Instant) -> Tokens {
        Tokens {
            current: rng.gen(),
            previous: rng.gen(),
            next_rotation: now + ROTATE_EVERY,
        }
    }

    /// When [`Tokens::handle_timeout`] must next run.
    pub fn poll_timeout(&self) -> Instant {
        self.next_rotation
    }

    /// Rotates the secret if it is time (once per elapsed period; after a long gap both
    /// secrets are fresh, so no old token survives it).
    pub fn handle_timeout(&mut self, now: Instant, rng: &mut impl Rng) {
        if now < self.next_rotation {
            return;
        }
        if now >= self.next_rotation + ROTATE_EVERY {
            self.previous = rng.gen();
        } else {
            self.previous = self.current;
        }
        self.current = rng.gen();
        self.next_rotation = now + ROTATE_EVERY;
    }

    /// The token for a querier at `ip` asking for `info_hash`.
    pub fn issue(&self, ip: IpAddr, info_hash: &Id) -> [u8; TOKEN_LEN] {
        make(&self.current, ip, info_hash)
    }

    /// `token` was issued to `ip` for `info_hash` under the current or the previous
    /// secret.
    pub fn check(&self, ip: IpAddr, info_hash: &Id, token: &[u8]) -> bool {
        token == make(&self.current, ip, info_hash) || token == make(&self.previous, ip, info_hash)
    }
}

fn make(secret: &[u8; 16], ip: IpAddr, info_hash: &Id) -> [u8; TOKEN_LEN] {
    let mut input = [0u8; 36];
    let len = match ip {
        IpAddr::V4(v4) => {
            input[..4].copy_from_slice(&v4.octets());
            4
        }
        IpAddr::V6(v6) => {
            input[..16].copy_from_slice(&v6.octets());
            16
        }
    };
    input[len..len + 20].copy_from_slice(&info_hash.0);
    siphash24(secret, &input[..len + 20]).to_le_bytes()
}

#[cfg(test)]
mod tests {
    use super::*;
    use rand::rngs::StdRng;
    use rand::SeedableRng;

    #[test]
    fn tokens_rotate_and_expire() {
        let mut rng = StdRng::seed_from_u64(3);
        let t0 = Instant::now();
        let mut tokens = Tokens::new(&mut rng, t0);
        let a: IpAddr = "1.2.3.4".parse().expect("ip");
        let b: IpAddr = "1.2.3.5".parse().expect("ip");
        let ih = Id([1; 20]);
        let tok = tokens.issue(a, &ih);
        assert!(tokens.check(a, &ih, &tok));
        assert!(!tokens.check(b, &ih, &tok), "bound to the querier's ip");
        assert!(
            !tokens.check(a, &Id([2; 20]), &tok),
            "bound to the infohash"
        );
        assert!(!tokens.check(a, &ih, &tok[..4]));
        tokens.handle_timeout(t0 + ROTATE_EVERY, &mut rng);
        assert!(tokens.check(a, &ih, &tok), "previous secret still accepted");
        assert_ne!(tokens.issue(a, &ih), tok);
        tokens.handle_timeout(t0 + ROTATE_EVERY * 2, &mut rng);
        assert!(
            !tokens.check(a, &ih, &tok),
            "two rotations later it is gone"
        );
        // A gap of two periods with no timer forgets both secrets at once.
        let tok = tokens.issue(a, &ih);
        tokens.handle_timeout(t0 + ROTATE_EVERY * 5, &mut rng);
        assert!(!tokens.check(a, &ih, &tok));
    }
}
