//! What the host checks on every entity that enters it, whatever the plugin: source
//! timestamps must lie in the project's time range, RFC 3339's (years 0001 to 9999, see
//! `synchronizer_plugin_api::time`). An out-of-range timestamp is discarded: the entity
//! is kept, ordered as one whose source gives no time, and the hub counts and logs it.

use synchronizer_plugin_api::Entity;
use synchronizer_plugin_api::time::in_range;

/// Clears `entity`'s source timestamp if it is out of range; returns the refused value.
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
    use super::*;
    use synchronizer_plugin_api::time::{MAX_MICROS, MIN_MICROS};

    #[test]
    fn out_of_range_times_are_cleared_and_the_rest_kept() {
        for ok in [MIN_MICROS, -1, 0, MAX_MICROS] {
            let mut e = Entity::resource("t", "a").with_source_updated_micros(ok);
            assert_eq!(sanitize_times(&mut e), None);
            assert_eq!(e.source_updated_micros(), Some(ok));
        }
        for bad in [i64::MIN, MIN_MICROS - 1, MAX_MICROS + 1, i64::MAX] {
            let mut e = Entity::resource("t", "a").with_source_updated_micros(bad);
            assert_eq!(sanitize_times(&mut e), Some(bad));
            assert_eq!(e.source_updated_micros(), None);
        }
        let mut untimed = Entity::resource("t", "a");
        assert_eq!(sanitize_times(&mut untimed), None);
    }
}
