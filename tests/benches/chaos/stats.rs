//! Small statistics for the bench.

pub fn median(v: &[f64]) -> f64 {
    percentile(v, 0.5)
}

/// The `p` quantile (0..=1) by nearest rank; NaN for no samples.
pub fn percentile(v: &[f64], p: f64) -> f64 {
    if v.is_empty() {
        return f64::NAN;
    }
    let mut s = v.to_vec();
    s.sort_by(f64::total_cmp);
    s[((s.len() - 1) as f64 * p).round() as usize]
}

/// (smallest, largest); (inf, -inf) for no samples.
pub fn min_max(v: &[f64]) -> (f64, f64) {
    v.iter()
        .fold((f64::INFINITY, f64::NEG_INFINITY), |(lo, hi), x| {
            (lo.min(*x), hi.max(*x))
        })
}

pub fn mean(v: &[f64]) -> f64 {
    v.iter().sum::<f64>() / v.len() as f64
}

pub fn std_dev(v: &[f64]) -> f64 {
    let m = mean(v);
    (v.iter().map(|x| (x - m).powi(2)).sum::<f64>() / v.len() as f64).sqrt()
}

/// Binomial 4σ band around `n * p`: (low, high).
pub fn binomial_band(n: u64, p: f64) -> (f64, f64) {
    let mean = n as f64 * p;
    let sigma = (n as f64 * p * (1.0 - p)).sqrt();
    (mean - 4.0 * sigma, mean + 4.0 * sigma)
}

/// Formats with `digits` decimals.
pub fn f(x: f64, digits: usize) -> String {
    format!("{x:.digits$}")
}

/// A distribution-free confidence interval of about 95 % for the median, from order
/// statistics (the normal approximation to the binomial): (low, high); the whole range when
/// there are too few samples for one.
pub fn median_ci(v: &[f64]) -> (f64, f64) {
    let n = v.len();
    if n == 0 {
        return (f64::NAN, f64::NAN);
    }
    let mut s = v.to_vec();
    s.sort_by(f64::total_cmp);
    let k = ((n as f64 - 1.96 * (n as f64).sqrt()) / 2.0).floor();
    if k < 1.0 {
        return (s[0], s[n - 1]);
    }
    let k = k as usize;
    (s[k - 1], s[n - k])
}
