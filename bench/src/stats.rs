//! Pure statistics over latency samples.

use std::time::Duration;

/// Nearest-rank percentile of samples sorted in ascending order: the smallest
/// sample such that at least `p` percent of the samples are less than or equal
/// to it (rank `ceil(p/100 * n)`, at least 1). `None` when there are no
/// samples. `p` is clamped to `0..=100`.
pub fn percentile<T: Copy>(sorted: &[T], p: f64) -> Option<T> {
    let n = sorted.len();
    if n == 0 {
        return None;
    }
    let p = if p.is_nan() { 0.0 } else { p.clamp(0.0, 100.0) };
    // Multiply before dividing and shave a hair off so that exact ranks such
    // as 99.9% of 1000 are not pushed up by binary rounding.
    let rank = (p * n as f64 / 100.0 - 1e-9).ceil();
    let rank = (rank.max(1.0) as usize).min(n);
    Some(sorted[rank - 1])
}

/// Nearest-rank median (the 50th percentile; for an even count, the lower of
/// the two middle samples).
pub fn median<T: Copy>(sorted: &[T]) -> Option<T> {
    percentile(sorted, 50.0)
}

/// Element-wise sums of two equally long sample series (e.g. ADD and DEL
/// latency of the same container).
pub fn pairwise_sum(a: &[Duration], b: &[Duration]) -> Vec<Duration> {
    assert_eq!(a.len(), b.len(), "sample series of different lengths");
    a.iter().zip(b).map(|(x, y)| *x + *y).collect()
}

/// Milliseconds as a float.
pub fn ms(d: Duration) -> f64 {
    d.as_secs_f64() * 1e3
}

/// The percentiles the reports show, of one sample series.
#[derive(Debug, Clone, Copy, PartialEq, serde::Serialize)]
pub struct Summary {
    pub samples: usize,
    pub p50_ms: f64,
    pub p99_ms: f64,
    pub min_ms: f64,
    pub max_ms: f64,
}

impl Summary {
    /// Summarises `samples` (any order). `None` when empty.
    pub fn of(samples: &[Duration]) -> Option<Self> {
        let mut sorted = samples.to_vec();
        sorted.sort_unstable();
        Some(Self {
            samples: sorted.len(),
            p50_ms: ms(median(&sorted)?),
            p99_ms: ms(percentile(&sorted, 99.0)?),
            min_ms: ms(*sorted.first()?),
            max_ms: ms(*sorted.last()?),
        })
    }
}

/// The median of `values` (any order); NaN when empty.
pub fn median_of(values: &[f64]) -> f64 {
    let mut v = values.to_vec();
    v.sort_by(f64::total_cmp);
    median(&v).unwrap_or(f64::NAN)
}

/// `a / b`, the "times" factor shown in reports (`0.62x` means `a` takes 62%
/// of `b`'s time).
pub fn ratio(a: f64, b: f64) -> f64 {
    a / b
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn nearest_rank_textbook_examples() {
        // Examples from the definition of the nearest-rank method.
        let a = [15, 20, 35, 40, 50];
        assert_eq!(percentile(&a, 5.0), Some(15));
        assert_eq!(percentile(&a, 30.0), Some(20));
        assert_eq!(percentile(&a, 40.0), Some(20));
        assert_eq!(percentile(&a, 50.0), Some(35));
        assert_eq!(percentile(&a, 100.0), Some(50));

        let b = [3, 6, 7, 8, 8, 10, 13, 15, 16, 20];
        assert_eq!(percentile(&b, 25.0), Some(7));
        assert_eq!(percentile(&b, 50.0), Some(8));
        assert_eq!(percentile(&b, 75.0), Some(15));
        assert_eq!(percentile(&b, 100.0), Some(20));
    }

    #[test]
    fn edges() {
        let empty: [u32; 0] = [];
        assert_eq!(percentile(&empty, 50.0), None);
        assert_eq!(median(&empty), None);
        assert_eq!(percentile(&[7], 0.0), Some(7));
        assert_eq!(percentile(&[7], 99.0), Some(7));
        assert_eq!(percentile(&[1, 2, 3], 0.0), Some(1));
        assert_eq!(percentile(&[1, 2, 3], -5.0), Some(1));
        assert_eq!(percentile(&[1, 2, 3], 250.0), Some(3));
        assert_eq!(percentile(&[1, 2, 3], f64::NAN), Some(1));
    }

    #[test]
    fn exact_ranks_are_not_rounded_up() {
        let v: Vec<u32> = (1..=1000).collect();
        assert_eq!(percentile(&v, 99.9), Some(999));
        assert_eq!(percentile(&v, 99.0), Some(990));
        let v: Vec<u32> = (1..=200).collect();
        assert_eq!(percentile(&v, 99.0), Some(198));
        assert_eq!(percentile(&v, 50.0), Some(100));
        let v: Vec<u32> = (1..=300).collect();
        assert_eq!(percentile(&v, 99.0), Some(297));
    }

    #[test]
    fn p99_of_small_series_is_the_max() {
        let v: Vec<u32> = (1..=50).collect();
        assert_eq!(percentile(&v, 99.0), Some(50));
    }

    #[test]
    fn median_even_count_takes_lower_middle() {
        assert_eq!(median(&[1, 2, 3, 4]), Some(2));
        assert_eq!(median(&[1, 2, 3, 4, 5]), Some(3));
    }

    #[test]
    fn summary_sorts_and_converts() {
        let s = Summary::of(&[
            Duration::from_micros(3000),
            Duration::from_micros(1000),
            Duration::from_micros(2000),
        ])
        .unwrap();
        assert_eq!(s.samples, 3);
        assert!((s.p50_ms - 2.0).abs() < 1e-9);
        assert!((s.p99_ms - 3.0).abs() < 1e-9);
        assert!((s.min_ms - 1.0).abs() < 1e-9);
        assert!((s.max_ms - 3.0).abs() < 1e-9);
        assert_eq!(Summary::of(&[]), None);
    }

    #[test]
    fn pairwise_sum_adds_per_index() {
        let a = [Duration::from_millis(1), Duration::from_millis(2)];
        let b = [Duration::from_millis(10), Duration::from_millis(20)];
        assert_eq!(
            pairwise_sum(&a, &b),
            vec![Duration::from_millis(11), Duration::from_millis(22)]
        );
    }

    #[test]
    #[should_panic(expected = "different lengths")]
    fn pairwise_sum_rejects_mismatch() {
        pairwise_sum(&[Duration::ZERO], &[]);
    }

    #[test]
    fn ratio_is_a_over_b() {
        assert!((ratio(1.0, 4.0) - 0.25).abs() < 1e-12);
    }
}
