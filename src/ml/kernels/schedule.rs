//! The order in which a batch of rows of different lengths is stepped.
//!
//! Rows are sorted by length, longest first (stable, so equal lengths keep batch order).
//! At step `s` the rows still running are then the first `active[s]` of the sorted order,
//! which lets every step run one matrix product over a contiguous block. Saved states are
//! stored step-major and compact: step `s` holds exactly `active[s]` rows, starting at row
//! `offsets[s]`, so padded positions cost neither memory nor arithmetic.

/// Sorted row order and the per-step row counts of one batch.
#[derive(Debug, Clone)]
pub(crate) struct Schedule {
    /// Batch row of each sorted position.
    pub order: Vec<usize>,
    /// Length of each sorted position (non-increasing).
    pub lens: Vec<usize>,
    /// Number of rows still running at each step; `active.len()` is the longest length.
    pub active: Vec<usize>,
    /// First compact row of each step; one more entry than `active`, the last is the total.
    pub offsets: Vec<usize>,
    /// Whether rows are read from their last real token back to the first.
    pub reverse: bool,
}

impl Schedule {
    /// The schedule of rows with these lengths (each at least 1).
    pub(crate) fn new(lengths: &[usize], reverse: bool) -> Self {
        let mut order: Vec<usize> = (0..lengths.len()).collect();
        order.sort_by_key(|&b| std::cmp::Reverse(lengths[b]));
        let lens: Vec<usize> = order.iter().map(|&b| lengths[b]).collect();

        let steps = lens.first().copied().unwrap_or(0);
        let active: Vec<usize> = (0..steps).map(|s| lens.partition_point(|&l| l > s)).collect();
        let mut offsets = Vec::with_capacity(steps + 1);
        let mut total = 0;
        offsets.push(0);
        for &n in &active {
            total += n;
            offsets.push(total);
        }
        Self { order, lens, active, offsets, reverse }
    }

    /// Number of steps (the longest length).
    pub(crate) fn steps(&self) -> usize {
        self.active.len()
    }

    /// Total number of real (row, step) positions.
    pub(crate) fn total(&self) -> usize {
        self.offsets.last().copied().unwrap_or(0)
    }

    /// Time index read at step `s` by sorted position `i`.
    #[inline]
    pub(crate) fn time(&self, i: usize, s: usize) -> usize {
        if self.reverse {
            self.lens[i] - 1 - s
        } else {
            s
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn active_rows_form_a_prefix_of_the_sorted_order() {
        let sched = Schedule::new(&[2, 4, 1, 4], true);
        assert_eq!(sched.order, vec![1, 3, 0, 2]);
        assert_eq!(sched.active, vec![4, 3, 2, 2]);
        assert_eq!(sched.offsets, vec![0, 4, 7, 9, 11]);
        assert_eq!(sched.total(), 11);
        // Reverse: step 0 reads each row's last real token.
        assert_eq!(sched.time(2, 0), 1);
        assert_eq!(sched.time(0, 3), 0);
    }
}
