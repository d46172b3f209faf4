//! End-to-end tests only (`tests/`); the harness is natter-testkit.
