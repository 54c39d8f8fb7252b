//! Fair share per device: a token bucket of readings per device, one for live
//! readings and a larger one for backfill (a batch whose readings are nearly all
//! older than `VT_BACKFILL_AFTER_SECONDS`, a device flushing its buffer after an
//! outage). Why readings and not requests, and how replicas share a limit:
//! docs/design.md, "Fair share per device".
//!
//! The buckets of a process are shared by its server threads (a mutex per slice
//! of devices, held for a few arithmetic operations). A bucket left alone long
//! enough to be full again is the same as no bucket, so such buckets are dropped:
//! memory follows the devices seen within the last refill time, not all devices.

use std::collections::HashMap;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::Mutex;
use std::time::{Duration, Instant};

use crate::error::ApiError;
use crate::metrics;
use crate::validate::Reading;

/// Devices per process are spread over this many maps, each behind its own lock.
const SLICES: usize = 64;
/// How often a slice is swept of full buckets at most.
const SWEEP_EVERY: Duration = Duration::from_secs(10);
/// Share of a batch's readings that must be old for it to count as backfill.
pub const BACKFILL_SHARE_PERCENT: usize = 90;

/// A rate and burst in readings; the settings' figures and this replica's share of them.
#[derive(Debug, Clone, Copy, PartialEq)]
pub struct Rate {
    /// The limit as configured, for the whole deployment (messages name it).
    pub per_second: u64,
    pub burst: u64,
    /// This replica's share: `per_second / replicas`, `burst / replicas`.
    share_per_second: f64,
    share_burst: f64,
}

impl Rate {
    /// `per_second` 0 means no limit (`None`).
    pub fn new(per_second: u64, burst: u64, replicas: u32) -> Option<Self> {
        if per_second == 0 {
            return None;
        }
        let n = f64::from(replicas.max(1));
        #[allow(clippy::cast_precision_loss)]
        let (rate, burst_f) = (per_second as f64, burst.max(1) as f64);
        Some(Self { per_second, burst: burst.max(1), share_per_second: rate / n, share_burst: (burst_f / n).max(1.0) })
    }
}

/// The limiter's settings (`VT_RATE_LIMIT*`, `VT_BACKFILL_*`).
#[derive(Debug, Clone, Copy, PartialEq)]
pub struct Settings {
    /// Live readings; `None`: no limiting at all.
    pub live: Option<Rate>,
    /// Backfill; `None`: backfill batches draw from the live bucket.
    pub backfill: Option<Rate>,
    /// A reading older than this (against the receive time) is backfill.
    pub backfill_after_ms: i64,
}

/// Which bucket a batch draws from.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Budget {
    Live,
    Backfill,
}

impl Budget {
    /// The `reason` label of rejections.
    pub fn reason(self) -> &'static str {
        match self {
            Self::Live => "rate_limited",
            Self::Backfill => "backfill_rate_limited",
        }
    }
}

/// A batch is backfill when at least `BACKFILL_SHARE_PERCENT` of its readings
/// are older than `backfill_after_ms` before `now_ms`. Not all of them: a device
/// flushing its buffer sends its newest readings in the same batch; not merely
/// most: mixing live readings into old ones must not buy the larger budget.
pub fn is_backfill(readings: &[Reading], now_ms: i64, backfill_after_ms: i64) -> bool {
    if readings.is_empty() {
        return false;
    }
    let cutoff = now_ms.saturating_sub(backfill_after_ms);
    let old = readings.iter().filter(|r| r.ts_ms < cutoff).count();
    old * 100 >= readings.len() * BACKFILL_SHARE_PERCENT
}

/// A token bucket of readings.
#[derive(Debug, Clone, Copy)]
pub struct Bucket {
    tokens: f64,
    updated: Instant,
}

impl Bucket {
    /// A full bucket.
    pub fn full(rate: &Rate, now: Instant) -> Self {
        Self { tokens: rate.share_burst, updated: now }
    }

    fn refill(&mut self, rate: &Rate, now: Instant) {
        let elapsed = now.saturating_duration_since(self.updated).as_secs_f64();
        self.tokens = (self.tokens + elapsed * rate.share_per_second).min(rate.share_burst);
        self.updated = now;
    }

    /// Takes `n` readings, or says how long until they could be taken. A batch
    /// larger than the burst passes when the bucket is full and leaves it in debt,
    /// so it is not refused forever and the long-run rate still holds.
    pub fn take(&mut self, n: usize, rate: &Rate, now: Instant) -> Result<(), Duration> {
        self.refill(rate, now);
        #[allow(clippy::cast_precision_loss)]
        let n = n as f64;
        let needed = n.min(rate.share_burst);
        if self.tokens + 1e-9 >= needed {
            self.tokens -= n;
            Ok(())
        } else {
            Err(Duration::from_secs_f64((needed - self.tokens) / rate.share_per_second))
        }
    }

    /// Puts `n` readings back, up to the burst.
    pub fn give_back(&mut self, n: usize, rate: &Rate, now: Instant) {
        self.refill(rate, now);
        #[allow(clippy::cast_precision_loss)]
        let n = n as f64;
        self.tokens = (self.tokens + n).min(rate.share_burst);
    }

    /// How long until one reading could be taken (zero if now), taking nothing.
    pub fn wait_for_one(&mut self, rate: &Rate, now: Instant) -> Duration {
        self.refill(rate, now);
        let needed = 1.0_f64.min(rate.share_burst);
        if self.tokens + 1e-9 >= needed {
            Duration::ZERO
        } else {
            Duration::from_secs_f64((needed - self.tokens) / rate.share_per_second)
        }
    }

    /// Full again by `now`: the same as no bucket.
    fn is_full_at(&self, rate: &Rate, now: Instant) -> bool {
        let elapsed = now.saturating_duration_since(self.updated).as_secs_f64();
        self.tokens + elapsed * rate.share_per_second >= rate.share_burst
    }
}

/// `Retry-After` in whole seconds: the wait rounded up, at least 1.
pub fn retry_after_seconds(wait: Duration) -> u32 {
    let secs = wait.as_secs() + u64::from(wait.subsec_nanos() > 0);
    u32::try_from(secs.max(1)).unwrap_or(u32::MAX)
}

/// A refusal: which budget, and how long to wait.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Limited {
    pub budget: Budget,
    pub wait: Duration,
}

#[derive(Default)]
struct Device {
    live: Option<Bucket>,
    backfill: Option<Bucket>,
}

struct Slice {
    devices: HashMap<u64, Device>,
    swept: Instant,
}

/// The buckets of every device of this process.
pub struct Limiter {
    settings: Settings,
    slices: Box<[Mutex<Slice>]>,
    tracked: AtomicUsize,
}

impl Limiter {
    pub fn new(settings: Settings) -> Self {
        let now = Instant::now();
        let slices = (0..SLICES).map(|_| Mutex::new(Slice { devices: HashMap::new(), swept: now })).collect();
        Self { settings, slices, tracked: AtomicUsize::new(0) }
    }

    pub fn settings(&self) -> &Settings {
        &self.settings
    }

    pub fn enabled(&self) -> bool {
        self.settings.live.is_some()
    }

    /// Devices with a bucket that is not full (the memory the limiter holds).
    pub fn tracked(&self) -> usize {
        self.tracked.load(Ordering::Relaxed)
    }

    fn rate_of(&self, budget: Budget) -> Option<&Rate> {
        match budget {
            Budget::Backfill => self.settings.backfill.as_ref().or(self.settings.live.as_ref()),
            Budget::Live => self.settings.live.as_ref(),
        }
    }

    /// The budget a batch draws from.
    pub fn budget_of(&self, readings: &[Reading], now_ms: i64) -> Budget {
        if self.settings.backfill.is_some() && is_backfill(readings, now_ms, self.settings.backfill_after_ms) {
            Budget::Backfill
        } else {
            Budget::Live
        }
    }

    fn with_device<T>(&self, device_id: u64, now: Instant, f: impl FnOnce(&mut Device) -> T) -> T {
        let index = usize::try_from(device_id % SLICES as u64).unwrap_or(0);
        let mut slice = self.slices[index].lock().unwrap_or_else(std::sync::PoisonError::into_inner);
        if now.saturating_duration_since(slice.swept) >= SWEEP_EVERY {
            let before = slice.devices.len();
            let (live, backfill) = (self.settings.live, self.rate_of(Budget::Backfill).copied());
            slice.devices.retain(|_, d| {
                let full = |b: &Option<Bucket>, r: Option<Rate>| match (b, r) {
                    (Some(b), Some(r)) => b.is_full_at(&r, now),
                    _ => true,
                };
                !(full(&d.live, live) && full(&d.backfill, backfill))
            });
            slice.swept = now;
            self.tracked.fetch_sub(before - slice.devices.len(), Ordering::Relaxed);
        }
        let before = slice.devices.len();
        let out = f(slice.devices.entry(device_id).or_default());
        if slice.devices.len() > before {
            self.tracked.fetch_add(1, Ordering::Relaxed);
        }
        out
    }

    /// Takes a batch's readings from its budget (which it says), or refuses it (nothing taken).
    pub fn take(&self, device_id: u64, readings: &[Reading], now_ms: i64, now: Instant) -> Result<Budget, Limited> {
        if !self.enabled() || readings.is_empty() {
            return Ok(Budget::Live);
        }
        let budget = self.budget_of(readings, now_ms);
        let Some(rate) = self.rate_of(budget).copied() else { return Ok(budget) };
        self.with_device(device_id, now, |d| {
            // `budget_of` says Backfill only when there is a backfill budget.
            let slot = if budget == Budget::Backfill { &mut d.backfill } else { &mut d.live };
            slot.get_or_insert_with(|| Bucket::full(&rate, now))
                .take(readings.len(), &rate, now)
                .map(|()| budget)
                .map_err(|wait| Limited { budget, wait })
        })
    }

    /// Gives back what a batch took when it could not be stored after all (Redis failed): the device
    /// resends it, and must not pay for it twice.
    pub fn give_back(&self, device_id: u64, budget: Budget, readings: usize, now: Instant) {
        if !self.enabled() || readings == 0 {
            return;
        }
        let Some(rate) = self.rate_of(budget).copied() else { return };
        self.with_device(device_id, now, |d| {
            let slot = if budget == Budget::Backfill { &mut d.backfill } else { &mut d.live };
            if let Some(bucket) = slot.as_mut() {
                bucket.give_back(readings, &rate, now);
            }
        });
    }

    /// Before the body is read: a refusal when not even one reading could pass,
    /// live or backfill, so a flooding device costs no parsing. Takes nothing.
    pub fn precheck(&self, device_id: u64, now: Instant) -> Result<(), Limited> {
        let Some(live) = self.settings.live else { return Ok(()) };
        let index = usize::try_from(device_id % SLICES as u64).unwrap_or(0);
        let mut slice = self.slices[index].lock().unwrap_or_else(std::sync::PoisonError::into_inner);
        let Some(d) = slice.devices.get_mut(&device_id) else { return Ok(()) };
        let live_wait = d.live.as_mut().map_or(Duration::ZERO, |b| b.wait_for_one(&live, now));
        if live_wait.is_zero() {
            return Ok(());
        }
        if let Some(backfill) = self.settings.backfill {
            let wait = d.backfill.as_mut().map_or(Duration::ZERO, |b| b.wait_for_one(&backfill, now));
            if wait.is_zero() {
                return Ok(());
            }
        }
        Err(Limited { budget: Budget::Live, wait: live_wait })
    }

    /// The 429 of a refusal, naming the limit.
    pub fn error(&self, device_id: u64, limited: Limited) -> ApiError {
        let retry_after_seconds = retry_after_seconds(limited.wait);
        let rate = self.rate_of(limited.budget).copied();
        let (per_second, burst) = rate.map_or((0, 0), |r| (r.per_second, r.burst));
        let what = match limited.budget {
            Budget::Live => "",
            Budget::Backfill => "backfill ",
        };
        ApiError::RateLimited {
            message: format!(
                "device {device_id} exceeds its {what}{per_second} readings/s limit (burst {burst}); \
                 retry after {retry_after_seconds} s"
            ),
            retry_after_seconds,
            reason: limited.budget.reason(),
        }
    }

    /// Publishes the number of devices tracked.
    pub fn report(&self) {
        metrics::rate_limit_devices(self.tracked());
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn rate(per_second: u64, burst: u64) -> Rate {
        Rate::new(per_second, burst, 1).unwrap()
    }

    fn readings(n: usize, ts_ms: i64) -> Vec<Reading> {
        (0..n).map(|_| Reading { metric: "t".into(), ts_ms, value: 1.0 }).collect()
    }

    const NOW_MS: i64 = 1_795_748_400_000;

    fn settings(live: u64, burst: u64, backfill: Option<(u64, u64)>) -> Settings {
        Settings {
            live: Rate::new(live, burst, 1),
            backfill: backfill.and_then(|(r, b)| Rate::new(r, b, 1)),
            backfill_after_ms: 600_000,
        }
    }

    #[test]
    fn a_full_bucket_gives_its_burst_then_refuses() {
        let r = rate(10, 50);
        let t0 = Instant::now();
        let mut b = Bucket::full(&r, t0);
        assert_eq!(b.take(30, &r, t0), Ok(()));
        assert_eq!(b.take(20, &r, t0), Ok(()));
        let wait = b.take(1, &r, t0).unwrap_err();
        assert!((wait.as_secs_f64() - 0.1).abs() < 1e-6, "{wait:?}");
    }

    #[test]
    fn tokens_refill_at_the_rate_up_to_the_burst() {
        let r = rate(10, 50);
        let t0 = Instant::now();
        let mut b = Bucket::full(&r, t0);
        b.take(50, &r, t0).unwrap();
        assert!(b.take(6, &r, t0 + Duration::from_millis(500)).is_err());
        assert!(b.take(5, &r, t0 + Duration::from_millis(500)).is_ok());
        // An hour idle fills it to the burst, not beyond.
        let later = t0 + Duration::from_hours(1);
        assert!(b.take(50, &r, later).is_ok());
        assert!(b.take(1, &r, later).is_err());
    }

    #[test]
    fn a_batch_over_the_burst_passes_on_a_full_bucket_and_leaves_debt() {
        let r = rate(10, 50);
        let t0 = Instant::now();
        let mut b = Bucket::full(&r, t0);
        assert_eq!(b.take(100, &r, t0), Ok(()));
        // 50 in debt: one reading more waits for 51 tokens, 5.1 s.
        let wait = b.take(1, &r, t0).unwrap_err();
        assert!((wait.as_secs_f64() - 5.1).abs() < 1e-6, "{wait:?}");
        assert!(b.take(1, &r, t0 + Duration::from_millis(5100)).is_ok());
    }

    #[test]
    fn retry_after_rounds_up_to_whole_seconds_at_least_one() {
        assert_eq!(retry_after_seconds(Duration::ZERO), 1);
        assert_eq!(retry_after_seconds(Duration::from_millis(1)), 1);
        assert_eq!(retry_after_seconds(Duration::from_secs(1)), 1);
        assert_eq!(retry_after_seconds(Duration::from_millis(1001)), 2);
        assert_eq!(retry_after_seconds(Duration::from_millis(4999)), 5);
        assert_eq!(retry_after_seconds(Duration::from_secs(u64::MAX)), u32::MAX);
    }

    #[test]
    fn replicas_share_the_rate_and_the_burst() {
        let r = Rate::new(1000, 5000, 4).unwrap();
        assert_eq!((r.per_second, r.burst), (1000, 5000));
        let t0 = Instant::now();
        let mut b = Bucket::full(&r, t0);
        assert!(b.take(1250, &r, t0).is_ok());
        let wait = b.take(250, &r, t0).unwrap_err();
        assert!((wait.as_secs_f64() - 1.0).abs() < 1e-6, "{wait:?}");
        assert_eq!(Rate::new(0, 5000, 1), None);
    }

    #[test]
    fn backfill_is_a_batch_of_nearly_all_old_readings() {
        let old = NOW_MS - 3_600_000;
        let mut batch = readings(9, old);
        batch.extend(readings(1, NOW_MS));
        assert!(is_backfill(&batch, NOW_MS, 600_000));
        batch.extend(readings(1, NOW_MS));
        assert!(!is_backfill(&batch, NOW_MS, 600_000), "9 of 11 old is not enough");
        assert!(!is_backfill(&readings(3, NOW_MS - 599_000), NOW_MS, 600_000));
        assert!(is_backfill(&readings(3, NOW_MS - 600_001), NOW_MS, 600_000));
        assert!(!is_backfill(&[], NOW_MS, 600_000));
    }

    #[test]
    fn a_backfill_batch_draws_from_its_own_budget() {
        let limiter = Limiter::new(settings(10, 10, Some((100, 1000))));
        let t0 = Instant::now();
        let old = NOW_MS - 3_600_000;
        assert!(limiter.take(1, &readings(10, NOW_MS), NOW_MS, t0).is_ok());
        let refused = limiter.take(1, &readings(10, NOW_MS), NOW_MS, t0).unwrap_err();
        assert_eq!(refused.budget, Budget::Live);
        // The same size of batch, old: passes, from the backfill bucket.
        assert!(limiter.take(1, &readings(10, old), NOW_MS, t0).is_ok());
        assert!(limiter.take(1, &readings(990, old), NOW_MS, t0).is_ok());
        let refused = limiter.take(1, &readings(10, old), NOW_MS, t0).unwrap_err();
        assert_eq!(refused.budget, Budget::Backfill);
        // Other devices have buckets of their own.
        assert!(limiter.take(2, &readings(10, NOW_MS), NOW_MS, t0).is_ok());
    }

    #[test]
    fn what_could_not_be_stored_is_given_back() {
        let limiter = Limiter::new(settings(10, 10, Some((100, 100))));
        let t0 = Instant::now();
        let budget = limiter.take(1, &readings(10, NOW_MS), NOW_MS, t0).unwrap();
        assert_eq!(budget, Budget::Live);
        assert!(limiter.take(1, &readings(1, NOW_MS), NOW_MS, t0).is_err());
        limiter.give_back(1, budget, 10, t0);
        assert!(limiter.take(1, &readings(10, NOW_MS), NOW_MS, t0).is_ok());
        // Never above the burst.
        limiter.give_back(1, budget, 1000, t0);
        assert!(limiter.take(1, &readings(10, NOW_MS), NOW_MS, t0).is_ok());
        assert!(limiter.take(1, &readings(1, NOW_MS), NOW_MS, t0).is_err());
        let old = NOW_MS - 3_600_000;
        assert_eq!(limiter.take(1, &readings(100, old), NOW_MS, t0), Ok(Budget::Backfill));
    }

    #[test]
    fn without_a_backfill_budget_old_batches_count_as_live() {
        let limiter = Limiter::new(settings(10, 10, None));
        let t0 = Instant::now();
        assert!(limiter.take(1, &readings(10, NOW_MS - 3_600_000), NOW_MS, t0).is_ok());
        assert_eq!(limiter.take(1, &readings(1, NOW_MS - 3_600_000), NOW_MS, t0).unwrap_err().budget, Budget::Live);
    }

    #[test]
    fn rate_zero_means_no_limit() {
        let limiter = Limiter::new(settings(0, 10, Some((100, 100))));
        assert!(!limiter.enabled());
        let t0 = Instant::now();
        for _ in 0..100 {
            assert!(limiter.take(1, &readings(1000, NOW_MS), NOW_MS, t0).is_ok());
            assert!(limiter.precheck(1, t0).is_ok());
        }
        assert_eq!(limiter.tracked(), 0);
    }

    #[test]
    fn the_precheck_refuses_only_when_no_reading_could_pass() {
        let limiter = Limiter::new(settings(10, 10, Some((100, 100))));
        let t0 = Instant::now();
        assert!(limiter.precheck(1, t0).is_ok(), "an unseen device");
        limiter.take(1, &readings(10, NOW_MS), NOW_MS, t0).unwrap();
        assert!(limiter.precheck(1, t0).is_ok(), "its backfill budget is untouched");
        limiter.take(1, &readings(100, NOW_MS - 3_600_000), NOW_MS, t0).unwrap();
        let refused = limiter.precheck(1, t0).unwrap_err();
        assert_eq!(refused.budget, Budget::Live);
        assert!(limiter.precheck(1, t0 + Duration::from_millis(100)).is_ok());
    }

    #[test]
    fn the_message_names_the_limit_and_the_wait() {
        let limiter = Limiter::new(settings(1000, 5000, Some((10_000, 100_000))));
        let e = limiter.error(12, Limited { budget: Budget::Live, wait: Duration::from_millis(300) });
        assert_eq!(e.to_string(), "device 12 exceeds its 1000 readings/s limit (burst 5000); retry after 1 s");
        assert_eq!(e.code(), "rate_limited");
        assert_eq!(e.reason(), "rate_limited");
        let e = limiter.error(12, Limited { budget: Budget::Backfill, wait: Duration::from_millis(2500) });
        assert_eq!(
            e.to_string(),
            "device 12 exceeds its backfill 10000 readings/s limit (burst 100000); retry after 3 s"
        );
        assert_eq!(e.code(), "rate_limited");
        assert_eq!(e.reason(), "backfill_rate_limited");
    }

    #[test]
    fn buckets_of_devices_gone_quiet_are_dropped() {
        let limiter = Limiter::new(settings(100, 100, Some((1000, 1000))));
        let t0 = Instant::now();
        for id in 0..10_000 {
            limiter.take(id, &readings(50, NOW_MS), NOW_MS, t0).unwrap();
        }
        assert_eq!(limiter.tracked(), 10_000);
        // Still refilling after 0.2 s: a sweep keeps them.
        for id in 0..SLICES as u64 {
            limiter.precheck(id, t0 + Duration::from_millis(200)).unwrap();
        }
        // Full again (0.5 s at 100/s) and the sweep interval passed: every slice a device touches is swept.
        let later = t0 + SWEEP_EVERY + Duration::from_secs(1);
        for id in 0..SLICES as u64 {
            limiter.take(1_000_000 + id, &readings(1, NOW_MS), NOW_MS, later).unwrap();
        }
        assert_eq!(limiter.tracked(), SLICES);
    }
}
