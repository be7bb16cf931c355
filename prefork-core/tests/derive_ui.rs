//! Compile tests for `#[derive(WorkerContext)]`: what must compile (and run), and the compile
//! errors the derive gives for what it rejects.

#[test]
fn derive_ui() {
    let t = trybuild::TestCases::new();
    t.pass("tests/ui/pass/*.rs");
    t.compile_fail("tests/ui/fail/*.rs");
}
