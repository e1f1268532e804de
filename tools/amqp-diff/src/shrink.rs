//! Delta debugging: the smallest subsequence (1-minimal: no single item can be dropped) for
//! which a predicate still holds. The predicate is "still diverges the same way" and re-runs
//! both brokers, so it is expensive: the number of calls is what this keeps down.

/// Shrinks `items` while `fails` holds. `fails(items)` is assumed true on entry.
pub fn ddmin<T: Clone>(mut items: Vec<T>, mut fails: impl FnMut(&[T]) -> bool) -> Vec<T> {
    let mut n = 2usize;
    while items.len() >= 2 {
        let len = items.len();
        let n_eff = n.min(len);
        let chunk = len.div_ceil(n_eff);
        let mut reduced = false;
        // Try every complement: the sequence without one chunk.
        let mut start = 0;
        while start < items.len() {
            let end = (start + chunk).min(items.len());
            let candidate: Vec<T> = items[..start]
                .iter()
                .chain(&items[end..])
                .cloned()
                .collect();
            if !candidate.is_empty() && fails(&candidate) {
                items = candidate;
                reduced = true;
                // Keep the granularity, drop one chunk's worth of it.
                n = n_eff.saturating_sub(1).max(2);
                break;
            }
            start = end;
        }
        if !reduced {
            if n_eff >= items.len() {
                break;
            }
            n = (n_eff * 2).min(items.len());
        }
    }
    items
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn finds_the_two_ops_that_matter() {
        // A synthetic divergence: it shows when op 13 comes somewhere before op 31.
        let items: Vec<u32> = (0..50).collect();
        let mut calls = 0;
        let min = ddmin(items, |s| {
            calls += 1;
            let a = s.iter().position(|&x| x == 13);
            let b = s.iter().position(|&x| x == 31);
            matches!((a, b), (Some(a), Some(b)) if a < b)
        });
        assert_eq!(min, vec![13, 31]);
        assert!(calls < 120, "{calls} predicate calls");
    }

    #[test]
    fn single_cause_and_order_kept() {
        let min = ddmin((0..17).collect::<Vec<u32>>(), |s| s.contains(&5));
        assert_eq!(min, vec![5]);
        let min = ddmin((0..9).collect::<Vec<u32>>(), |s| {
            s.contains(&2) && s.contains(&7) && s.contains(&8)
        });
        assert_eq!(min, vec![2, 7, 8]);
    }

    #[test]
    fn result_is_one_minimal() {
        // Holds when at least three even numbers are present.
        let min = ddmin((0..40).collect::<Vec<u32>>(), |s| {
            s.iter().filter(|x| *x % 2 == 0).count() >= 3
        });
        assert_eq!(min.len(), 3);
        assert!(min.iter().all(|x| x % 2 == 0));
    }
}
