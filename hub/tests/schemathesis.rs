//! The hub against schemathesis: requests generated from the hub's own `/v1/openapi.json`
//! (valid and invalid bodies, odd path parameters, stateful sequences), sent with an admin
//! token to a real `cairn-hub`. No answer may be a 5xx, and every answer must match the
//! status, content type and JSON schema the document gives.

use std::process::Command;

use cairn_test_support::hub::Hub;

/// Installed by scripts/setup into cairn's Python venv.
const SCHEMATHESIS: &str = "/opt/cairn/venv/bin/schemathesis";

/// Runs schemathesis against `hub` with `args` selecting operations and phases; returns its
/// report after asserting it found nothing and tested at least `min_operations` operations.
fn run(hub: &Hub, args: &[&str], min_operations: usize) -> String {
    let work = tempfile::tempdir().unwrap();
    let out = Command::new(SCHEMATHESIS)
        .current_dir(work.path())
        .arg("run")
        .arg(format!("{}/v1/openapi.json", hub.url))
        .args(["-H", &format!("Authorization: Bearer {}", hub.admin_token)])
        .arg("--tls-verify")
        .arg(hub.data.join("ca.pem"))
        .args([
            "--checks",
            "not_a_server_error,status_code_conformance,content_type_conformance,response_schema_conformance",
        ])
        .args(args)
        .args(["--max-examples", "20", "--generation-deterministic"])
        .args(["--no-color", "--request-timeout", "10"])
        .output()
        .unwrap_or_else(|e| panic!("{SCHEMATHESIS}: {e} (run scripts/setup)"));
    let report = String::from_utf8_lossy(&out.stdout).into_owned();
    assert!(
        out.status.success(),
        "schemathesis found failures:\n{report}\n{}\nthe hub's log:\n{}",
        String::from_utf8_lossy(&out.stderr),
        std::fs::read_to_string(&hub.log).unwrap_or_default()
    );
    // A run that reached no operation would pass too: every selected operation must have
    // passed.
    let selected: usize = report
        .lines()
        .find_map(|l| l.trim().strip_prefix("Operations:"))
        .and_then(|l| l.split_whitespace().next()?.parse().ok())
        .unwrap_or_else(|| panic!("no operation count in the report:\n{report}"));
    assert!(
        selected >= min_operations,
        "only {selected} operations selected:\n{report}"
    );
    assert!(
        report.contains(&format!("✅ {selected} passed")),
        "not every operation passed:\n{report}"
    );
    report
}

#[test]
fn generated_requests_get_no_server_error_and_answers_match_the_document() {
    // schemathesis pools connections and may pick one that sat unused past the hub's
    // header-read or idle timeout; a POST on a connection the hub just closed is not
    // retried and reads as a network error. Timeouts longer than the run keep that
    // ordinary keep-alive race out of a test about answers (hub/tests/limits.rs tests them).
    let hub = Hub::builder(env!("CARGO_BIN_EXE_cairn-hub"))
        .serve_args(&["--header-read-timeout", "600", "--idle-timeout", "600"])
        .start();
    const SELF_REVOKING: [&str; 2] = [
        "DELETE /v1/operator-tokens/{id}",
        "POST /v1/operator-tokens/{id}/revoke",
    ];
    // Watches stream until the client goes: each request would end on schemathesis'
    // timeout, not with an answer to check (hub/tests/api.rs and events.rs test them).
    const STREAMING: [&str; 3] = [
        "GET /v1/watch/appliances",
        "GET /v1/watch/appliances/{id}",
        "GET /v1/watch/events",
    ];
    // Every operation, stateful sequences included, but the two that could delete or
    // revoke the admin's own token (a stateful sequence may feed them its ID) and leave
    // every later request unauthenticated.
    let mut all = Vec::new();
    for op in SELF_REVOKING.iter().chain(&STREAMING) {
        all.extend(["--exclude-name", op]);
    }
    run(&hub, &all, 40);
    // Then those two, last and without stateful sequences: generated IDs and bodies.
    let mut last = vec!["--phases", "examples,coverage,fuzzing"];
    for op in SELF_REVOKING {
        last.extend(["--include-name", op]);
    }
    run(&hub, &last, SELF_REVOKING.len());
}
