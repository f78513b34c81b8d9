//! Zone affinity: how much of this gateway's traffic to a backend stays in its own zone.
//!
//! Even-load spill-over, Envoy's zone-aware formula without its limits: a gateway keeps
//! local the share that keeps per-endpoint load even across the fleet,
//!
//!   local share = min(1, upstream_share(zone) / fleet_share(zone)),
//!
//! and sends the rest to the zones whose endpoints have room beyond their own gateways'
//! traffic, in proportion to that room. Unlike Envoy it works down to one endpoint per zone
//! and has no minimum cluster size; unlike `PreferClose` alone it never leaves a zone with
//! fewer endpoints carrying a full zone's load.

/// Traffic shares per zone, in parts of [`PARTS`], for a gateway in zone `local`.
///
/// `healthy[z]` counts the usable endpoints of zone `z`; `fleet[z]` is the relative number of
/// gateway replicas in zone `z` (any unit). Zones with no healthy endpoint get nothing, so a
/// request never goes where it cannot be served while another zone can serve it.
pub fn shares(healthy: &[usize], fleet: &[f64], local: Option<usize>) -> Vec<u32> {
    let total: usize = healthy.iter().sum();
    let mut out = vec![0u32; healthy.len()];
    if total == 0 {
        return out;
    }
    let upstream: Vec<f64> = healthy.iter().map(|&h| h as f64 / total as f64).collect();
    let fleet_total: f64 = fleet.iter().filter(|f| f.is_finite() && **f > 0.0).sum();
    let fleet_share = |z: usize| {
        if fleet_total > 0.0 {
            fleet.get(z).copied().unwrap_or(0.0).max(0.0) / fleet_total
        } else {
            0.0
        }
    };
    let local_share = match local {
        Some(l) if upstream[l] > 0.0 => {
            let f = fleet_share(l);
            if f <= 0.0 {
                1.0
            } else {
                (upstream[l] / f).min(1.0)
            }
        }
        _ => 0.0,
    };
    // Room of each other zone: what its endpoints can take beyond its own gateways' load.
    let room: Vec<f64> = (0..healthy.len())
        .map(|z| {
            if Some(z) == local || healthy[z] == 0 {
                0.0
            } else {
                (upstream[z] - fleet_share(z)).max(0.0)
            }
        })
        .collect();
    let room_total: f64 = room.iter().sum();
    let rest = 1.0 - local_share;
    let mut f = vec![0.0; healthy.len()];
    if let Some(l) = local {
        f[l] = local_share;
    }
    for z in 0..healthy.len() {
        if Some(z) == local {
            continue;
        }
        f[z] = if local.is_none() {
            // A gateway that does not know its zone has nothing to prefer.
            upstream[z]
        } else if room_total > 0.0 {
            rest * room[z] / room_total
        } else {
            // No zone has room (or there is no local zone): spread by endpoint count.
            let others: f64 = (0..healthy.len())
                .filter(|&o| Some(o) != local)
                .map(|o| upstream[o])
                .sum();
            if others > 0.0 {
                rest * upstream[z] / others
            } else {
                0.0
            }
        };
    }
    // Largest remainders so the parts add up exactly.
    let mut sum = 0u32;
    for (o, v) in out.iter_mut().zip(&f) {
        *o = (v * f64::from(PARTS)).floor() as u32;
        sum += *o;
    }
    let mut order: Vec<usize> = (0..f.len()).filter(|&z| healthy[z] > 0).collect();
    order.sort_by(|&a, &b| {
        let frac = |z: usize| f[z] * f64::from(PARTS) - f64::from(out[z]);
        frac(b).total_cmp(&frac(a))
    });
    for z in order
        .into_iter()
        .cycle()
        .take(PARTS.saturating_sub(sum) as usize)
    {
        out[z] += 1;
    }
    out
}

/// Shares are computed in ten-thousandths: a hundredth of a percentage point.
pub const PARTS: u32 = 10_000;

#[cfg(test)]
mod tests {
    use super::*;

    const EVEN: [f64; 3] = [1.0, 1.0, 1.0];

    #[test]
    fn balanced_zones_stay_local() {
        assert_eq!(shares(&[2, 2, 2], &EVEN, Some(0)), [10_000, 0, 0]);
        assert_eq!(shares(&[1, 1, 1], &EVEN, Some(2)), [0, 0, 10_000]);
    }

    #[test]
    fn the_worked_example_keeps_sixty_percent_local() {
        // 3 zones × 2 endpoints, zone a down to 1: 1/5 ÷ 1/3 = 60% local, 20% each elsewhere.
        assert_eq!(shares(&[1, 2, 2], &EVEN, Some(0)), [6000, 2000, 2000]);
    }

    #[test]
    fn one_endpoint_per_zone_works_where_envoy_needs_six() {
        // Zone a lost its only endpoint: b and c take half each, nothing fails.
        assert_eq!(shares(&[0, 1, 1], &EVEN, Some(0)), [0, 5000, 5000]);
        // A zone with more endpoints than its share of gateways takes the spill.
        assert_eq!(shares(&[1, 3, 1], &EVEN, Some(0)), [6000, 4000, 0]);
    }

    #[test]
    fn fleet_weights_change_the_local_share() {
        // Twice the gateways in a: a's endpoints can only take half of a's traffic.
        assert_eq!(shares(&[1, 1], &[2.0, 1.0], Some(0)), [7500, 2500]);
        assert_eq!(shares(&[1, 1], &[1.0, 2.0], Some(0)), [10_000, 0]);
    }

    #[test]
    fn no_local_zone_spreads_by_endpoints() {
        assert_eq!(shares(&[1, 3], &EVEN, None), [2500, 7500]);
        assert_eq!(shares(&[0, 0], &EVEN, Some(0)), [0, 0]);
    }

    #[test]
    fn parts_always_add_up_and_skip_empty_zones() {
        for healthy in [[1, 1, 1], [3, 0, 7], [1, 2, 4], [5, 5, 1]] {
            for local in [None, Some(0), Some(1), Some(2)] {
                let s = shares(&healthy, &EVEN, local);
                assert_eq!(s.iter().sum::<u32>(), PARTS, "{healthy:?} {local:?}");
                for (z, h) in healthy.iter().enumerate() {
                    assert!(*h > 0 || s[z] == 0, "{healthy:?} {local:?} {s:?}");
                }
            }
        }
    }
}
