//! Delay distribution tables for the kernel, as netem's: `DIST_TABLE_SIZE` quantiles of a
//! distribution, scaled so 1σ = 4096 and clipped to ±8σ (the i16 range). The kernel picks a
//! random entry and scales it by the rule's jitter. Each table is standardised after clipping,
//! so `jitter` is the standard deviation of the delay actually applied, heavy tails included.

use chaos_common::rules::{DIST_MAX_SIGMA, DIST_SCALE_SHIFT, DIST_TABLE_SIZE, DistTable};

/// Pareto shape parameter, as iproute2's pareto table.
const PARETO_ALPHA: f64 = 3.0;
/// Share of the normal part in Pareto-normal, as netem's paretonormal (1 : 3).
const PARETONORMAL_NORMAL_SHARE: f64 = 0.25;

/// The tables in kernel order: normal, Pareto, Pareto-normal.
pub fn tables() -> [DistTable; 3] {
    [
        table(inverse_normal),
        table(standard_pareto),
        table(|u| {
            let mixed = PARETONORMAL_NORMAL_SHARE * inverse_normal(u)
                + (1.0 - PARETONORMAL_NORMAL_SHARE) * standard_pareto(u);
            // Rescale the mix (its parts are perfectly correlated quantiles) to σ = 1.
            mixed / (PARETONORMAL_NORMAL_SHARE + (1.0 - PARETONORMAL_NORMAL_SHARE))
        }),
    ]
}

fn table(quantile: impl Fn(f64) -> f64) -> DistTable {
    let n = f64::from(DIST_TABLE_SIZE);
    let mut values: Vec<f64> = (0..DIST_TABLE_SIZE)
        .map(|i| quantile((f64::from(i) + 0.5) / n))
        .collect();
    // Clipping a heavy tail shrinks the spread; re-standardising widens it again. A few rounds
    // settle both (Pareto converges in three).
    let limit = f64::from(DIST_MAX_SIGMA) - 0.01;
    for _ in 0..8 {
        let mean = values.iter().sum::<f64>() / n;
        let sd = (values.iter().map(|v| (v - mean).powi(2)).sum::<f64>() / n).sqrt();
        for v in &mut values {
            *v = ((*v - mean) / sd).clamp(-limit, limit);
        }
    }
    let scale = f64::from(1u32 << DIST_SCALE_SHIFT);
    DistTable {
        entries: std::array::from_fn(|i| (values[i] * scale).round() as i16),
    }
}

/// Pareto with shape α and scale 1, shifted and scaled to mean 0, σ 1.
fn standard_pareto(u: f64) -> f64 {
    let a = PARETO_ALPHA;
    let x = (1.0 - u).powf(-1.0 / a);
    let mean = a / (a - 1.0);
    let sd = (a / ((a - 1.0).powi(2) * (a - 2.0))).sqrt();
    (x - mean) / sd
}

/// The standard normal quantile function (Acklam's rational approximation, relative error
/// below 1.2e-9: far finer than the table's 1/8192 σ steps).
fn inverse_normal(p: f64) -> f64 {
    const A: [f64; 6] = [
        -3.969_683_028_665_376e1,
        2.209_460_984_245_205e2,
        -2.759_285_104_469_687e2,
        1.383_577_518_672_69e2,
        -3.066_479_806_614_716e1,
        2.506_628_277_459_239,
    ];
    const B: [f64; 5] = [
        -5.447_609_879_822_406e1,
        1.615_858_368_580_409e2,
        -1.556_989_798_598_866e2,
        6.680_131_188_771_972e1,
        -1.328_068_155_288_572e1,
    ];
    const C: [f64; 6] = [
        -7.784_894_002_430_293e-3,
        -3.223_964_580_411_365e-1,
        -2.400_758_277_161_838,
        -2.549_732_539_343_734,
        4.374_664_141_464_968,
        2.938_163_982_698_783,
    ];
    const D: [f64; 4] = [
        7.784_695_709_041_462e-3,
        3.224_671_290_700_398e-1,
        2.445_134_137_142_996,
        3.754_408_661_907_416,
    ];
    const LOW: f64 = 0.024_25;
    let tail = |q: f64| {
        (((((C[0] * q + C[1]) * q + C[2]) * q + C[3]) * q + C[4]) * q + C[5])
            / ((((D[0] * q + D[1]) * q + D[2]) * q + D[3]) * q + 1.0)
    };
    if p < LOW {
        tail((-2.0 * p.ln()).sqrt())
    } else if p > 1.0 - LOW {
        -tail((-2.0 * (1.0 - p).ln()).sqrt())
    } else {
        let q = p - 0.5;
        let r = q * q;
        (((((A[0] * r + A[1]) * r + A[2]) * r + A[3]) * r + A[4]) * r + A[5]) * q
            / (((((B[0] * r + B[1]) * r + B[2]) * r + B[3]) * r + B[4]) * r + 1.0)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn moments(t: &[i16]) -> (f64, f64) {
        let scale = f64::from(1u32 << DIST_SCALE_SHIFT);
        let n = t.len() as f64;
        let mean = t.iter().map(|&v| f64::from(v) / scale).sum::<f64>() / n;
        let var = t
            .iter()
            .map(|&v| (f64::from(v) / scale - mean).powi(2))
            .sum::<f64>()
            / n;
        (mean, var.sqrt())
    }

    #[test]
    fn normal_quantiles() {
        assert!(inverse_normal(0.5).abs() < 1e-9);
        assert!((inverse_normal(0.975) - 1.959_964).abs() < 1e-5);
        assert!((inverse_normal(0.001) + 3.090_232).abs() < 1e-5);
    }

    #[test]
    fn tables_are_standardised() {
        let [normal, pareto, paretonormal] = tables();
        let (m, s) = moments(&normal.entries);
        assert!(
            m.abs() < 0.01 && (s - 1.0).abs() < 0.01,
            "normal: mean {m} sd {s}"
        );
        // Pareto's heavy tail is clipped at 4σ, so its spread comes out a little under 1.
        for (name, t) in [
            ("pareto", &pareto.entries),
            ("paretonormal", &paretonormal.entries),
        ] {
            let (m, s) = moments(t);
            assert!(
                m.abs() < 0.15 && (0.75..=1.0).contains(&s),
                "{name}: mean {m} sd {s}"
            );
            assert!(t.windows(2).all(|w| w[0] <= w[1]), "{name} is sorted");
        }
    }
}
