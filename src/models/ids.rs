//! Identifiers in the original system's formats.

use uuid::Uuid;

fn prefixed(prefix: &str) -> String {
    let hex = Uuid::new_v4().simple().to_string();
    format!("{prefix}{}", &hex[..16])
}

/// `cr_` + 16 lowercase hex digits: a cost record id.
pub fn cost_record_id() -> String {
    prefixed("cr_")
}

/// `ca_` + 16 lowercase hex digits: a cost anomaly id.
pub fn cost_anomaly_id() -> String {
    prefixed("ca_")
}

/// `cb_` + 16 lowercase hex digits: a cost budget id.
pub fn cost_budget_id() -> String {
    prefixed("cb_")
}

/// `ft_` + 16 lowercase hex digits: a feature tag id.
pub fn feature_tag_id() -> String {
    prefixed("ft_")
}

/// `bh_` + 16 lowercase hex digits: a breach-history id.
pub fn breach_history_id() -> String {
    prefixed("bh_")
}

/// `dt_` + 16 lowercase hex digits: a drift-tracking id.
pub fn drift_tracking_id() -> String {
    prefixed("dt_")
}

/// `rsv_` + 16 lowercase hex digits: a budget reservation id.
pub fn reservation_id() -> String {
    prefixed("rsv_")
}

/// The first 12 characters of a hyphenated v4 UUID: a circuit-breaker incident id.
pub fn cb_incident_id() -> String {
    Uuid::new_v4().hyphenated().to_string()[..12].to_string()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn formats_match_the_original() {
        for (id, prefix) in [
            (cost_record_id(), "cr_"),
            (cost_anomaly_id(), "ca_"),
            (cost_budget_id(), "cb_"),
            (feature_tag_id(), "ft_"),
            (breach_history_id(), "bh_"),
            (drift_tracking_id(), "dt_"),
        ] {
            assert_eq!(id.len(), 19, "{id}");
            assert!(id.starts_with(prefix));
            assert!(
                id[3..].chars().all(|c| matches!(c, '0'..='9' | 'a'..='f')),
                "{id}"
            );
        }
        assert_ne!(cost_record_id(), cost_record_id());
        let rsv = reservation_id();
        assert_eq!(rsv.len(), 20, "{rsv}");
        assert!(rsv.starts_with("rsv_"));
        let inc = cb_incident_id();
        assert_eq!(inc.len(), 12);
        assert_eq!(inc.as_bytes()[8], b'-');
    }
}
