//! Helpers for unit tests.

/// Whether a component a test needs is here. When it is not, the test skips
/// with a visible message — or fails, under CI (`RECONCILE_REQUIRE_ALL=1`).
pub fn have(present: bool, what: &str) -> bool {
    if !present {
        assert!(
            std::env::var("RECONCILE_REQUIRE_ALL").as_deref() != Ok("1"),
            "required component missing (RECONCILE_REQUIRE_ALL=1): {what}"
        );
        eprintln!("SKIPPED: {what}");
    }
    present
}
