//! IPMI commands cairn uses: request bytes and lenient decoders of the answers (IPMI 2.0
//! specification sections 20 (App), 28 (Chassis), 31 (SEL), 33 (SDR), 35 (Sensor), 43).

use crate::bmc::{BootDevice, BootMode, BootOverride, LogEntry, PowerAction, Sensor};

/// Network functions.
pub mod netfn {
    /// Chassis.
    pub const CHASSIS: u8 = 0x00;
    /// Sensor/Event.
    pub const SENSOR: u8 = 0x04;
    /// Application.
    pub const APP: u8 = 0x06;
    /// Storage.
    pub const STORAGE: u8 = 0x0a;
}

/// Answer of Get Device ID.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct DeviceId {
    /// Device id.
    pub device_id: u8,
    /// Firmware revision as "major.minor".
    pub firmware: String,
    /// IPMI version as "2.0".
    pub ipmi_version: String,
    /// IANA manufacturer id.
    pub manufacturer_id: u32,
    /// Product id.
    pub product_id: u16,
}

/// Decodes Get Device ID; accepts the 11-byte minimum (the auxiliary revision is optional,
/// which the `ipmi` crate got wrong by demanding 15 bytes).
pub fn device_id(d: &[u8]) -> Option<DeviceId> {
    if d.len() < 11 {
        return None;
    }
    let bcd = |b: u8| (b >> 4) * 10 + (b & 0x0f);
    Some(DeviceId {
        device_id: d[0],
        firmware: format!("{}.{:02}", d[2] & 0x7f, bcd(d[3])),
        ipmi_version: format!("{}.{}", d[4] & 0x0f, d[4] >> 4),
        manufacturer_id: u32::from_le_bytes([d[6], d[7], d[8] & 0x0f, 0]),
        product_id: u16::from_le_bytes([d[9], d[10]]),
    })
}

/// Chassis Control data byte for an action.
pub fn chassis_control(action: PowerAction) -> u8 {
    match action {
        PowerAction::Off => 0x00,
        PowerAction::On => 0x01,
        PowerAction::Cycle => 0x02,
        PowerAction::Reset => 0x03,
        PowerAction::SoftOff => 0x05,
    }
}

/// Whether Get Chassis Status says the power is on.
pub fn power_on(d: &[u8]) -> Option<bool> {
    d.first().map(|b| b & 0x01 != 0)
}

/// Set System Boot Options, parameter 5 (boot flags).
pub fn boot_flags_request(boot: &BootOverride) -> Vec<u8> {
    let selector = match boot.device {
        BootDevice::None => 0x00,
        BootDevice::Pxe | BootDevice::Http => 0x01,
        BootDevice::Disk => 0x02,
        BootDevice::Cd => 0x05,
        BootDevice::BiosSetup => 0x06,
    };
    let mut b1 = 0x80; // valid
    if boot.persistent {
        b1 |= 0x40;
    }
    if boot.mode == Some(BootMode::Uefi) {
        b1 |= 0x20;
    }
    vec![0x05, b1, selector << 2, 0x00, 0x00, 0x00]
}

/// Get System Boot Options request for parameter 5.
pub const GET_BOOT_FLAGS: [u8; 3] = [0x05, 0x00, 0x00];

/// Decodes Get System Boot Options parameter 5. The device is read from the selector even
/// when the valid bit is clear: BMCs clear that bit at different times (OpenIPMI's
/// ipmi_sim never keeps it), and the selector is what the next boot will use.
pub fn boot_flags(d: &[u8]) -> Option<BootOverride> {
    if d.len() < 4 || d[1] & 0x7f != 0x05 {
        return None;
    }
    let (b1, b2) = (d[2], d[3]);
    let device = match (b2 >> 2) & 0x0f {
        0x01 => BootDevice::Pxe,
        0x02 | 0x03 => BootDevice::Disk,
        0x05 => BootDevice::Cd,
        0x06 => BootDevice::BiosSetup,
        _ => BootDevice::None,
    };
    Some(BootOverride {
        device,
        persistent: b1 & 0x40 != 0,
        mode: Some(if b1 & 0x20 != 0 {
            BootMode::Uefi
        } else {
            BootMode::Legacy
        }),
    })
}

/// Get SEL Entry request (whole record).
pub fn sel_entry_request(reservation: u16, record: u16) -> Vec<u8> {
    let mut v = reservation.to_le_bytes().to_vec();
    v.extend_from_slice(&record.to_le_bytes());
    v.extend_from_slice(&[0x00, 0xff]);
    v
}

fn sensor_type_name(t: u8) -> &'static str {
    match t {
        0x01 => "Temperature",
        0x02 => "Voltage",
        0x03 => "Current",
        0x04 => "Fan",
        0x05 => "Physical Security",
        0x07 => "Processor",
        0x08 => "Power Supply",
        0x09 => "Power Unit",
        0x0c => "Memory",
        0x0f => "System Firmware Progress",
        0x10 => "Event Logging Disabled",
        0x12 => "System Event",
        0x13 => "Critical Interrupt",
        0x1d => "System Boot Initiated",
        0x20 => "OS Stop/Shutdown",
        0x23 => "Watchdog",
        _ => "Sensor",
    }
}

/// Decodes a Get SEL Entry answer: (next record id, entry).
pub fn sel_entry(d: &[u8]) -> Option<(u16, LogEntry)> {
    if d.len() < 18 {
        return None;
    }
    let next = u16::from_le_bytes([d[0], d[1]]);
    let r = &d[2..18];
    let id = u16::from_le_bytes([r[0], r[1]]);
    let kind = r[2];
    let entry = if kind == 0x02 {
        let ts = u32::from_le_bytes([r[3], r[4], r[5], r[6]]);
        let (stype, snum, dir_type) = (r[10], r[11], r[12]);
        let asserted = dir_type & 0x80 == 0;
        LogEntry {
            id: id.to_string(),
            created: Some(if ts < 0x2000_0000 {
                format!("+{ts} s after init")
            } else {
                time::OffsetDateTime::from_unix_timestamp(ts as i64)
                    .ok()
                    .and_then(|t| {
                        t.format(&time::format_description::well_known::Rfc3339)
                            .ok()
                    })
                    .unwrap_or_else(|| ts.to_string())
            }),
            severity: None,
            message: format!(
                "{} #{snum:#04x} event type {:#04x} data {:02x} {:02x} {:02x} {}",
                sensor_type_name(stype),
                dir_type & 0x7f,
                r[13],
                r[14],
                r[15],
                if asserted { "asserted" } else { "deasserted" }
            ),
        }
    } else {
        LogEntry {
            id: id.to_string(),
            created: None,
            severity: None,
            message: format!("OEM record type {kind:#04x}: {:02x?}", &r[3..]),
        }
    };
    Some((next, entry))
}

/// Get SDR request (partial read).
pub fn sdr_request(reservation: u16, record: u16, offset: u8, len: u8) -> Vec<u8> {
    let mut v = reservation.to_le_bytes().to_vec();
    v.extend_from_slice(&record.to_le_bytes());
    v.extend_from_slice(&[offset, len]);
    v
}

/// A sensor described by an SDR.
#[derive(Debug, Clone, PartialEq)]
pub struct SensorRecord {
    /// Sensor number.
    pub number: u8,
    /// Name (ID string).
    pub name: String,
    /// Sensor type.
    pub sensor_type: u8,
    /// Threshold sensors have a linear conversion.
    pub conversion: Option<Conversion>,
    /// Unit text.
    pub unit: &'static str,
}

/// y = (M * x + B * 10^Bexp) * 10^Rexp.
#[derive(Debug, Clone, Copy, PartialEq)]
pub struct Conversion {
    /// Signedness of the raw value: 0 unsigned, 1 one's, 2 two's complement.
    pub format: u8,
    /// M.
    pub m: i16,
    /// B.
    pub b: i16,
    /// B exponent.
    pub b_exp: i8,
    /// Result exponent.
    pub r_exp: i8,
}

impl Conversion {
    /// Converts a raw reading.
    pub fn apply(&self, raw: u8) -> f64 {
        let x = match self.format {
            1 => {
                if raw & 0x80 != 0 {
                    -((!raw & 0x7f) as f64)
                } else {
                    raw as f64
                }
            }
            2 => raw as i8 as f64,
            _ => raw as f64,
        };
        (self.m as f64 * x + self.b as f64 * 10f64.powi(self.b_exp as i32))
            * 10f64.powi(self.r_exp as i32)
    }
}

fn sign_extend(v: u16, bits: u32) -> i16 {
    let shift = 16 - bits;
    ((v << shift) as i16) >> shift
}

fn unit_name(u: u8) -> &'static str {
    match u {
        1 => "°C",
        2 => "°F",
        4 => "V",
        5 => "A",
        6 => "W",
        18 => "RPM",
        _ => "",
    }
}

fn id_string(b: &[u8]) -> String {
    let Some(&tl) = b.first() else {
        return String::new();
    };
    let len = (tl & 0x1f) as usize;
    let s = &b[1..(1 + len).min(b.len())];
    String::from_utf8_lossy(s).trim_end_matches('\0').to_owned()
}

/// Decodes a full (0x01) or compact (0x02) sensor record; other types yield `None`.
pub fn sensor_record(r: &[u8]) -> Option<SensorRecord> {
    if r.len() < 5 {
        return None;
    }
    match r[3] {
        0x01 if r.len() >= 48 => {
            let threshold = r[13] == 0x01;
            let m = sign_extend(r[24] as u16 | ((r[25] as u16 & 0xc0) << 2), 10);
            let b = sign_extend(r[26] as u16 | ((r[27] as u16 & 0xc0) << 2), 10);
            let r_exp = sign_extend((r[29] >> 4) as u16, 4) as i8;
            let b_exp = sign_extend((r[29] & 0x0f) as u16, 4) as i8;
            let format = r[20] >> 6;
            Some(SensorRecord {
                number: r[7],
                name: id_string(&r[47..]),
                sensor_type: r[12],
                conversion: (threshold && r[23] == 0 && format != 3).then_some(Conversion {
                    format,
                    m,
                    b,
                    b_exp,
                    r_exp,
                }),
                unit: unit_name(r[21]),
            })
        }
        0x02 if r.len() >= 32 => Some(SensorRecord {
            number: r[7],
            name: id_string(&r[31..]),
            sensor_type: r[12],
            conversion: None,
            unit: unit_name(r[21]),
        }),
        _ => None,
    }
}

/// Builds a sensor from its record and a Get Sensor Reading answer.
pub fn sensor(record: &SensorRecord, reading: &[u8]) -> Sensor {
    let unavailable = reading.len() < 2 || reading[1] & 0x20 != 0 || reading[1] & 0x40 == 0;
    Sensor {
        name: record.name.clone(),
        kind: sensor_type_name(record.sensor_type).to_lowercase(),
        reading: match (&record.conversion, unavailable) {
            (Some(c), false) => Some(c.apply(reading[0])),
            _ => None,
        },
        unit: record.unit.to_owned(),
        status: Some(
            if unavailable {
                "unavailable"
            } else if reading.len() > 2 && reading[2] & 0x3f != 0 && record.conversion.is_some() {
                "threshold crossed"
            } else {
                "ok"
            }
            .to_owned(),
        ),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn device_id_minimum_and_full() {
        // Answer of ipmi_sim configured as `mc_add 0x20 0 no-device-sdrs 0x23 9 8 0x9f 0x1291 0xf02`.
        let d = [
            0x23, 0x03, 0x09, 0x08, 0x02, 0x9f, 0x91, 0x12, 0x00, 0x02, 0x0f,
        ];
        let id = device_id(&d).unwrap();
        assert_eq!(id.firmware, "9.08");
        assert_eq!(id.ipmi_version, "2.0");
        assert_eq!((id.manufacturer_id, id.product_id), (0x1291, 0x0f02));
        assert!(device_id(&d[..10]).is_none());
    }

    #[test]
    fn boot_flags_encode_and_decode() {
        let b = BootOverride {
            device: BootDevice::Pxe,
            persistent: false,
            mode: Some(BootMode::Uefi),
        };
        assert_eq!(boot_flags_request(&b), [0x05, 0xa0, 0x04, 0, 0, 0]);
        // What ipmi_sim answers after `ipmitool chassis bootdev pxe`: "0004000000".
        let got = boot_flags(&[0x01, 0x05, 0x00, 0x04, 0x00, 0x00, 0x00]).unwrap();
        assert_eq!(
            (got.device, got.persistent, got.mode),
            (BootDevice::Pxe, false, Some(BootMode::Legacy))
        );
        let p = BootOverride {
            device: BootDevice::Cd,
            persistent: true,
            mode: Some(BootMode::Legacy),
        };
        let req = boot_flags_request(&p);
        let mut answer = vec![0x01, 0x05];
        answer.extend_from_slice(&req[1..]);
        assert_eq!(boot_flags(&answer), Some(p));
    }

    #[test]
    fn sdr_full_record_and_reading() {
        // The record the ipmi_sim tests install (CPU Temp, M=1, degrees C).
        let mut r = vec![
            0x00, 0x00, 0x51, 0x01, 0x33, 0x20, 0x00, 0x01, 0x03, 0x01, 0x7f, 0x68, 0x01, 0x01,
        ];
        r.extend_from_slice(&[0; 6]);
        r.extend_from_slice(&[0x00, 0x01, 0x00, 0x00, 0x01, 0x00, 0x00, 0x00, 0x00, 0x00]);
        r.extend_from_slice(&[0x00, 0x00, 0x00, 0x00, 0xff]);
        r.extend_from_slice(&[0; 12]);
        r.push(0xc8);
        r.extend_from_slice(b"CPU Temp");
        let rec = sensor_record(&r).unwrap();
        assert_eq!(
            (rec.number, rec.name.as_str(), rec.unit),
            (1, "CPU Temp", "°C")
        );
        let s = sensor(&rec, &[45, 0xc0, 0x00]);
        assert_eq!((s.reading, s.kind.as_str()), (Some(45.0), "temperature"));
        assert_eq!(sensor(&rec, &[0, 0xe0]).reading, None);
        // Negative M and exponents: y = (-2x + 5*10^1) * 10^-1.
        let c = Conversion {
            format: 0,
            m: sign_extend(0x3fe, 10),
            b: 5,
            b_exp: 1,
            r_exp: -1,
        };
        assert!((c.apply(10) - 3.0).abs() < 1e-9);
    }

    #[test]
    fn sel_record() {
        let mut d = vec![0xff, 0xff];
        d.extend_from_slice(&[
            0x01, 0x00, 0x02, 0x3f, 0x07, 0x00, 0x00, 0x20, 0x00, 0x04, 0x01, 0x30, 0x01, 0x01,
            0x02, 0x03,
        ]);
        let (next, e) = sel_entry(&d).unwrap();
        assert_eq!(next, 0xffff);
        assert_eq!(e.id, "1");
        assert!(e.message.starts_with("Temperature #0x30"), "{}", e.message);
        assert_eq!(e.created.as_deref(), Some("+1855 s after init"));
        assert!(sel_entry(&d[..10]).is_none());
    }
}
