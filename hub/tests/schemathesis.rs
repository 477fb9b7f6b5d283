//! The hub against schemathesis: requests generated from the hub's own `/v1/openapi.json`
//! (valid and invalid bodies, odd path parameters, stateful sequences), sent with an admin
//! token to a real `cairn-hub`. No answer may be a 5xx, and every answer must match the
//! status, content type and JSON schema the document gives.

use std::process::Command;

use cairn_test_support::hub::Hub;

/// Installed by scripts/setup into cairn's Python venv.
const SCHEMATHESIS: &str = "/opt/cairn/venv/bin/schemathesis";

#[test]
fn generated_requests_get_no_server_error_and_answers_match_the_document() {
    let hub = Hub::builder(env!("CARGO_BIN_EXE_cairn-hub")).start();
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
        // Deleting the admin's own token would leave every later request unauthenticated.
        .args(["--exclude-name", "DELETE /v1/operator-tokens/{id}"])
        .args(["--max-examples", "20", "--generation-deterministic"])
        .args(["--no-color", "--request-timeout", "10"])
        .output()
        .unwrap_or_else(|e| panic!("{SCHEMATHESIS}: {e} (run scripts/setup)"));
    let report = String::from_utf8_lossy(&out.stdout);
    assert!(
        out.status.success(),
        "schemathesis found failures:\n{report}\n{}",
        String::from_utf8_lossy(&out.stderr)
    );
    // A run that reached no operation would pass too: the summary names them all.
    assert!(report.contains("Tested: 38"), "{report}");
}
