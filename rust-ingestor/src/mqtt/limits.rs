//! Per-process and per-connection bounds: the connection cap, the largest
//! packet, the keep-alive granted.

use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::Arc;
use std::time::Duration;

/// Bytes a PUBLISH may carry besides its payload (fixed header, topic, packet
/// id, MQTT 5 properties): the payload itself is held to `VT_MAX_BODY_BYTES`.
pub const PACKET_OVERHEAD: usize = 4096;

/// The largest packet accepted, for a payload limit.
pub fn max_packet(max_body_bytes: usize) -> u32 {
    u32::try_from(max_body_bytes.saturating_add(PACKET_OVERHEAD)).unwrap_or(u32::MAX)
}

/// Open connections of the whole process (every server thread), against the cap.
pub struct Slots {
    open: AtomicUsize,
    max: usize,
}

impl Slots {
    pub fn new(max: usize) -> Arc<Self> {
        Arc::new(Self { open: AtomicUsize::new(0), max })
    }

    /// A slot, or `None` when `max` connections are open.
    pub fn take(self: &Arc<Self>) -> Option<Slot> {
        let mut open = self.open.load(Ordering::Relaxed);
        loop {
            if open >= self.max {
                return None;
            }
            match self.open.compare_exchange_weak(open, open + 1, Ordering::AcqRel, Ordering::Relaxed) {
                Ok(_) => return Some(Slot(self.clone())),
                Err(now) => open = now,
            }
        }
    }

    pub fn open(&self) -> usize {
        self.open.load(Ordering::Relaxed)
    }
}

/// One connection's place under the cap, given back when dropped.
pub struct Slot(Arc<Slots>);

impl Drop for Slot {
    fn drop(&mut self) {
        self.0.open.fetch_sub(1, Ordering::AcqRel);
    }
}

/// The keep-alive granted for one asked: the asked one up to `max`; 0 (no
/// keep-alive) or more is cut to `max`, so a silent half-open connection is
/// always reaped. Also the value to tell an MQTT 5 client when it differs.
pub fn keep_alive(asked: u16, max: Duration) -> (Duration, Option<u16>) {
    let max_secs = u16::try_from(max.as_secs()).unwrap_or(u16::MAX);
    if asked == 0 || asked > max_secs {
        (Duration::from_secs(u64::from(max_secs)), Some(max_secs))
    } else {
        (Duration::from_secs(u64::from(asked)), None)
    }
}

/// How long a connection may be silent: one and a half keep-alives (MQTT 3.1.2.10).
pub fn silence_allowed(keep_alive: Duration) -> Duration {
    keep_alive + keep_alive / 2
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn slots_stop_at_the_cap_and_come_back() {
        let slots = Slots::new(2);
        let a = slots.take().unwrap();
        let _b = slots.take().unwrap();
        assert!(slots.take().is_none());
        drop(a);
        assert_eq!(slots.open(), 1);
        assert!(slots.take().is_some());
    }

    #[test]
    fn keep_alive_is_capped_and_never_zero() {
        let max = Duration::from_mins(5);
        assert_eq!(keep_alive(60, max), (Duration::from_mins(1), None));
        assert_eq!(keep_alive(300, max), (Duration::from_mins(5), None));
        assert_eq!(keep_alive(0, max), (Duration::from_mins(5), Some(300)));
        assert_eq!(keep_alive(301, max), (Duration::from_mins(5), Some(300)));
        assert_eq!(silence_allowed(Duration::from_mins(1)), Duration::from_secs(90));
    }

    #[test]
    fn the_packet_limit_leaves_room_for_the_headers() {
        assert_eq!(max_packet(1_048_576), 1_048_576 + 4096);
        assert_eq!(max_packet(usize::MAX), u32::MAX);
    }
}
