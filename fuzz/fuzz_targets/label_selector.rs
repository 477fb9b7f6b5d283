//! Label selectors, as any operator token holder sends them in `?selector=`: parsing never
//! panics, and what parses prints as text that parses back to the same selector.
#![no_main]

use cairn_api::hub::LabelSelector;
use libfuzzer_sys::fuzz_target;

fuzz_target!(|data: &[u8]| {
    let Ok(text) = std::str::from_utf8(data) else {
        return;
    };
    let Ok(selector) = text.parse::<LabelSelector>() else {
        return;
    };
    let again: LabelSelector = selector
        .to_string()
        .parse()
        .expect("the canonical text parses");
    assert_eq!(again, selector);
    let labels = [("role", "edge"), ("site", "dc1"), ("a", "")];
    let lookup = |k: &str| labels.iter().find(|(l, _)| *l == k).map(|(_, v)| *v);
    assert_eq!(selector.matches(lookup), again.matches(lookup));
});
