//! `cairn rack provision`'s configuring-firmware phase ([`apply_firmware`], what the state
//! machine runs) against real sushy-tools: its libvirt test driver, with a BIOS
//! AttributeRegistry and SimpleUpdate. The shipped `emulator` profile's BIOS change is staged
//! and verified and its BIOS image served to the BMC; a value the registry refuses fails the
//! server, naming the attribute, without retrying and without changing anything.

#[path = "../../hardware/tests/common/mod.rs"]
mod common;

use std::time::Duration;

use cairn_firmware_profiles::apply::ApplyOptions;
use cairn_firmware_profiles::cli::start_images;
use cairn_firmware_profiles::profile::{by_name, load_all};
use cairn_hardware::address::{BmcAddress, Credentials};
use cairn_hardware::bmc::Bmc;
use cairn_hardware::redfish::{RedfishBmc, RedfishOptions};
use cairn_installer::rack::machine::apply_firmware;
use common::{Sushy, SushyDriver};

/// The image the emulator profile's sha256 names.
const IMAGE: &[u8] = b"cairn emulator bios image\n";

#[tokio::test(flavor = "multi_thread")]
async fn the_emulator_profile_is_applied_and_verified_and_a_refused_value_fails_naming_it() {
    let sushy = Sushy::start(SushyDriver::LibvirtTest, None);
    let bmc = RedfishBmc::new(
        &BmcAddress::parse(&sushy.url("")).unwrap(),
        Credentials::new("admin", "x"),
        RedfishOptions::default(),
    )
    .unwrap();
    let profile = by_name(&load_all(None).unwrap(), "emulator")
        .unwrap()
        .clone();
    // The verified copy is already in the cache (as after an earlier run), so the profile's
    // image_url is not fetched; cairn's file server hands it to the BMC, which takes no push.
    let cache = tempfile::tempdir().unwrap();
    std::fs::write(cache.path().join(&profile.firmware[0].sha256), IMAGE).unwrap();
    // As `cairn rack provision` builds them (its --firmware-image-cache and
    // --firmware-serve-address go to the same helper).
    let images = start_images(
        Some(cache.path().to_owned()),
        Some("127.0.0.1:0".parse().unwrap()),
        None,
        false,
    )
    .await
    .unwrap();
    let server = images
        .server
        .clone()
        .expect("an image server was asked for");
    let options = ApplyOptions {
        reset: true,
        power_on: true,
        settle_timeout: Duration::from_secs(30),
        images,
    };
    let before = bmc.bios().await.unwrap();
    assert_eq!(before.current.get("ProcTurboMode"), Some(&"Enabled".into()));

    let note = apply_firmware(&bmc, &profile, &options).await.unwrap();
    assert!(
        note.starts_with("firmware profile emulator: staged 1 attribute(s)")
            && note.contains(", verified")
            && note.contains("updated bios")
            && note.contains("BMC downloaded the verified image from cairn"),
        "{note}"
    );
    assert_eq!(
        bmc.bios().await.unwrap().current.get("ProcTurboMode"),
        Some(&"Disabled".into())
    );
    // A re-run of the phase (a resumed provisioning) changes nothing.
    let again = apply_firmware(&bmc, &profile, &options).await.unwrap();
    assert_eq!(
        again,
        "firmware profile emulator: already in baseline, nothing changed"
    );

    let mut refused = profile.clone();
    refused
        .bios
        .attributes
        .insert("ProcTurboMode".into(), "Ludicrous".into());
    let e = apply_firmware(&bmc, &refused, &options).await.unwrap_err();
    assert!(!e.retryable, "asking again changes nothing: {e:?}");
    assert!(
        e.reason.contains("ProcTurboMode")
            && e.reason.contains("Ludicrous")
            && e.reason.contains("nothing was changed"),
        "{}",
        e.reason
    );
    assert_eq!(
        bmc.bios().await.unwrap().current.get("ProcTurboMode"),
        Some(&"Disabled".into())
    );
    server.stop().await;
}
