//! Metric accumulation for `forward_backward` results: each datum contributes partial statistics,
//! datums are merged in order, and [`Metrics::finish`] reduces them to the `name:reduction` map the
//! Tinker SDK expects (exactly one `:` per key, or the SDK crashes while combining chunks).

use std::collections::BTreeMap;

/// One metric's partial statistic. The variant is the reduction; it must match the key's suffix.
#[derive(Clone, Copy, Debug, PartialEq)]
pub enum Stat {
    /// `:sum`, added across datums.
    Sum(f64),
    /// `:mean`, `total / count` over everything merged (count may be 0: then the metric is
    /// omitted from [`Metrics::finish`], because a mean over nothing has no value).
    Mean { total: f64, count: f64 },
    /// `:max` across datums.
    Max(f64),
}

impl Stat {
    fn suffix(self) -> &'static str {
        match self {
            Stat::Sum(_) => "sum",
            Stat::Mean { .. } => "mean",
            Stat::Max(_) => "max",
        }
    }

    fn merge(self, other: Stat) -> Stat {
        match (self, other) {
            (Stat::Sum(a), Stat::Sum(b)) => Stat::Sum(a + b),
            (Stat::Mean { total: a, count: n }, Stat::Mean { total: b, count: m }) => {
                Stat::Mean { total: a + b, count: n + m }
            }
            (Stat::Max(a), Stat::Max(b)) => Stat::Max(a.max(b)),
            (a, b) => panic!("metric reductions differ: {a:?} vs {b:?}"),
        }
    }
}

/// Partial metrics keyed by their full wire name (`loss:sum`).
#[derive(Clone, Debug, Default, PartialEq)]
pub struct Metrics {
    stats: BTreeMap<&'static str, Stat>,
}

impl Metrics {
    /// Adds `stat` under `name`, merging with what is there.
    ///
    /// # Panics
    /// When `name` is not `base:reduction` with exactly one `:` and a suffix matching `stat`
    /// (a programmer error: the names are literals in this crate).
    pub fn add(&mut self, name: &'static str, stat: Stat) {
        let mut parts = name.split(':');
        let (base, suffix) = (parts.next(), parts.next());
        assert!(
            parts.next().is_none() && base.is_some_and(|b| !b.is_empty()) && suffix == Some(stat.suffix()),
            "metric name `{name}` must be `name:{}` with exactly one ':'",
            stat.suffix()
        );
        let merged = match self.stats.get(name) {
            Some(&old) => old.merge(stat),
            None => stat,
        };
        self.stats.insert(name, merged);
    }

    /// Adds every statistic of `other` (a later datum) into `self`.
    pub fn merge(&mut self, other: &Metrics) {
        for (&name, &stat) in &other.stats {
            self.add(name, stat);
        }
    }

    /// The partial statistic under `name`, if any.
    pub fn get(&self, name: &str) -> Option<Stat> {
        self.stats.get(name).copied()
    }

    /// Reduces to wire values. Means over nothing are omitted.
    pub fn finish(&self) -> BTreeMap<String, f64> {
        let mut out = BTreeMap::new();
        for (&name, &stat) in &self.stats {
            let value = match stat {
                Stat::Sum(x) | Stat::Max(x) => x,
                Stat::Mean { total, count } => {
                    if count == 0.0 {
                        continue;
                    }
                    total / count
                }
            };
            out.insert(name.to_string(), value);
        }
        out
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn sums_add_means_weight_by_count_and_maxima_take_the_largest() {
        let mut a = Metrics::default();
        a.add("loss:sum", Stat::Sum(1.5));
        a.add("ratio:mean", Stat::Mean { total: 3.0, count: 2.0 });
        a.add("ratio:max", Stat::Max(1.25));
        let mut b = Metrics::default();
        b.add("loss:sum", Stat::Sum(-0.5));
        b.add("ratio:mean", Stat::Mean { total: 1.0, count: 2.0 });
        b.add("ratio:max", Stat::Max(2.0));
        a.merge(&b);
        let done = a.finish();
        assert_eq!(done["loss:sum"], 1.0);
        assert_eq!(done["ratio:mean"], 1.0);
        assert_eq!(done["ratio:max"], 2.0);
    }

    #[test]
    fn a_mean_over_nothing_is_omitted() {
        let mut m = Metrics::default();
        m.add("clip_fraction:mean", Stat::Mean { total: 0.0, count: 0.0 });
        m.add("loss:sum", Stat::Sum(0.0));
        assert_eq!(m.finish().keys().collect::<Vec<_>>(), vec!["loss:sum"]);
    }

    #[test]
    #[should_panic(expected = "exactly one ':'")]
    fn a_name_without_its_reduction_suffix_is_a_programmer_error() {
        Metrics::default().add("loss", Stat::Sum(1.0));
    }
}
