//! The store author's example (`examples/custom_store.rs`) runs in CI: its exchange
//! between two nodes on loopback is compiled into this test and must end verified.
//! (`cargo test` builds examples but does not run them, and an example binary has no
//! `CARGO_BIN_EXE_*` path.)

#[allow(dead_code)]
#[path = "../../examples/custom_store.rs"]
mod example;

#[test]
fn custom_store_example_ends_with_equal_maps() {
    let report = example::run().unwrap_or_else(|e| panic!("custom_store: {e}"));
    assert_eq!(report.map.len(), 4, "{report:?}");
    assert_eq!(report.map["apple"], b"red", "{report:?}");
    assert_eq!(
        report.map["damson"], b"purple",
        "B's entry reached A: {report:?}"
    );
}
