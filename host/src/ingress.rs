//! What the host checks on every entity a plugin hands it, before the baseline, the view
//! or any output sees it.
//!
//! Source timestamps: the project accepts RFC 3339's range, years 1 to 9999
//! ([`synchronizer_plugin_api::time`]). A plugin sets the `i64` freely, and sources do send
//! times outside it (Go's zero time is year 1, a bad clock gives 1969, a milliseconds
//! field read as microseconds lands past 9999). The rule (docs/operator-guide.md,
//! "Timestamps"): an out-of-range source timestamp is discarded, so the entity counts as
//! untimed and the host's sample time stands in (for ordering and in the notification's
//! `source_updated`, which is then null); the hub counts it in
//! `synchronizer_invalid_timestamps_total` and logs it. The entity itself is kept.

use synchronizer_plugin_api::Entity;
use synchronizer_plugin_api::time::in_range;

/// Discards `entity`'s source timestamp if it is outside the accepted range; returns the
/// refused value (for the caller's counter and log), or `None` when there was nothing
/// to discard.
pub(crate) fn sanitize_times(entity: &mut Entity) -> Option<i64> {
    let us = entity.source_updated_micros()?;
    if in_range(us) {
        return None;
    }
    entity.clear_source_updated();
    Some(us)
}

#[cfg(test)]
mod tests {
    use synchronizer_plugin_api::time::{MAX_MICROS, MIN_MICROS};

    use super::*;

    #[test]
    fn an_out_of_range_source_timestamp_is_discarded_and_returned() {
        for us in [MIN_MICROS - 1, MAX_MICROS + 1, i64::MIN, i64::MAX] {
            let mut e = Entity::resource("t", "i")
                .with_name("n")
                .with_source_updated_micros(us);
            assert_eq!(sanitize_times(&mut e), Some(us));
            assert_eq!(e.source_updated_micros(), None);
            assert_eq!(e.name(), "n", "the rest of the entity is kept");
            assert_eq!(sanitize_times(&mut e), None, "nothing left to discard");
        }
    }

    #[test]
    fn in_range_and_missing_timestamps_are_left_alone() {
        // 1969 and year 1 are in range: before the epoch is not an error.
        for us in [MIN_MICROS, -1, 0, 1_764_000_000_000_000, MAX_MICROS] {
            let mut e = Entity::resource("t", "i").with_source_updated_micros(us);
            assert_eq!(sanitize_times(&mut e), None);
            assert_eq!(e.source_updated_micros(), Some(us));
        }
        let mut e = Entity::resource("t", "i");
        assert_eq!(sanitize_times(&mut e), None);
        assert_eq!(e, Entity::resource("t", "i"));
    }
}
