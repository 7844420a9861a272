//! Unit and property tests of the edge conversions.

use super::*;
use proptest::prelude::*;

// ------------------------------------------------------------------ fixtures

fn facility() -> v1::Facility {
    v1::Facility {
        id: "fac-0001".into(),
        name: "豊田訪問看護ステーション".into(),
        prefecture: "愛知県".into(),
        city: "豊田市".into(),
        kind: "訪問看護".into(),
    }
}

fn person() -> v1::Person {
    v1::Person {
        id: "person:42".into(),
        family_name: "山田".into(),
        given_name: "花子".into(),
        family_name_kana: "ヤマダ".into(),
        given_name_kana: "ハナコ".into(),
        job: "看護師".into(),
        email: "hanako.yamada@example.jp".into(),
    }
}

fn device() -> v1::Device {
    v1::Device {
        id: "dev_7.a".into(),
        os: v1::TargetOs::Ios as i32,
        remark: "業務用 iPhone".into(),
    }
}

fn create_request() -> v1::CreateTicketRequest {
    v1::CreateTicketRequest {
        facility: Some(facility()),
        person: Some(person()),
        device: Some(device()),
        profile: String::new(),
        approved_by: "事務局 佐藤".into(),
        renews_serial: String::new(),
    }
}

fn redeem_request() -> v1::RedeemTicketRequest {
    v1::RedeemTicketRequest {
        number: "01234567".into(),
        password: "98765432".into(),
        os: v1::TargetOs::Unspecified as i32,
        keystore_profile: String::new(),
    }
}

/// Asserts `result` is an error on `field` with `problem`, and that its message names the field.
#[track_caller]
fn assert_err<T: fmt::Debug>(result: Result<T, ConvertError>, field: &str, problem: Problem) {
    let err = result.expect_err("conversion must fail");
    assert_eq!(err.field, field, "{err}");
    assert_eq!(err.problem, problem, "{err}");
    let message = err.to_string();
    assert!(
        message.contains(&format!("`{field}`")),
        "message {message:?} must name the field {field:?}"
    );
    assert!(
        message.contains(&problem.to_string()),
        "message {message:?} must state the problem"
    );
}

// ------------------------------------------------------------------ field helpers

#[test]
fn ids_accept_the_ascii_alphabet_and_reject_the_rest() {
    assert_eq!(parse_id("id", "Ab0._:-z").as_deref(), Ok("Ab0._:-z"));
    assert_eq!(parse_id("id", &"a".repeat(64)).map(|s| s.len()), Ok(64));
    assert_err(parse_id("id", ""), "id", Problem::Missing);
    assert_err(parse_id("id", &"a".repeat(65)), "id", Problem::InvalidId);
    for bad in ["a b", "a/b", "施設", "a\nb", "a@b", "é", "a\u{0}"] {
        assert_err(
            parse_id("facility_id", bad),
            "facility_id",
            Problem::InvalidId,
        );
    }
}

#[test]
fn optional_ids_treat_empty_as_none() {
    assert_eq!(parse_optional_id("x", ""), Ok(None));
    assert_eq!(parse_optional_id("x", "a-1"), Ok(Some("a-1".into())));
    assert_err(parse_optional_id("x", "a b"), "x", Problem::InvalidId);
    assert_eq!(parse_issuer_selector(""), Ok(None));
    assert_eq!(
        parse_issuer_selector("issuer-2026"),
        Ok(Some("issuer-2026".into()))
    );
    assert_err(
        parse_issuer_selector("../etc"),
        "issuer_id",
        Problem::InvalidId,
    );
}

#[test]
fn ticket_numbers_are_exactly_eight_digits() {
    assert_eq!(parse_ticket_number("00000000").as_deref(), Ok("00000000"));
    assert_eq!(parse_ticket_number("12345678").as_deref(), Ok("12345678"));
    assert_err(parse_ticket_number(""), "number", Problem::Missing);
    for bad in [
        "1234567",
        "123456789",
        "1234567a",
        " 12345678",
        "１２３４５６７８",
        "+1234567",
    ] {
        assert_err(parse_ticket_number(bad), "number", Problem::NotEightDigits);
    }
}

#[test]
fn ticket_passwords_are_exactly_eight_digits_and_never_echoed() {
    assert_eq!(
        parse_ticket_password("87654321").map(|p| p.as_str().to_owned()),
        Ok("87654321".to_owned())
    );
    assert_err(parse_ticket_password(""), "password", Problem::Missing);
    for bad in ["8765432", "876543210", "8765432x", "secret!!"] {
        let err = parse_ticket_password(bad).expect_err("must fail");
        assert_eq!(err, ConvertError::new("password", Problem::NotEightDigits));
        assert!(!err.to_string().contains(bad));
        assert!(!format!("{err:?}").contains(bad));
    }
}

#[test]
fn serials_are_lowercase_hex_up_to_forty_digits() {
    assert_eq!(parse_serial("0").as_deref(), Ok("0"));
    let max = "0123456789abcdef0123456789abcdef01234567";
    assert_eq!(parse_serial(max).as_deref(), Ok(max));
    assert_err(parse_serial(""), "serial", Problem::Missing);
    for bad in ["0A", "0x1f", "0a:1b", "0a 1b", "g", "0a-1b", "０"] {
        assert_err(parse_serial(bad), "serial", Problem::NotLowercaseHex);
    }
    assert_err(
        parse_serial(&format!("{max}8")),
        "serial",
        Problem::HexLength {
            min: 1,
            max: 40,
            len: 41,
        },
    );
}

#[test]
fn target_os_maps_every_value() {
    let cases = [
        (v1::TargetOs::Windows, TargetOs::Windows),
        (v1::TargetOs::Macos, TargetOs::Macos),
        (v1::TargetOs::Android, TargetOs::Android),
        (v1::TargetOs::Ios, TargetOs::Ios),
    ];
    for (proto, domain) in cases {
        assert_eq!(TargetOs::try_from(proto), Ok(domain));
        assert_eq!(target_os("os", proto as i32), Ok(domain));
        assert_eq!(optional_target_os("os", proto as i32), Ok(Some(domain)));
        assert_eq!(v1::TargetOs::from(domain), proto);
    }
    assert_eq!(optional_target_os("os", 0), Ok(None));
    assert_err(target_os("device.os", 0), "device.os", Problem::Unspecified);
    assert_err(
        TargetOs::try_from(v1::TargetOs::Unspecified),
        "os",
        Problem::Unspecified,
    );
    for bad in [5, -1, i32::MAX, i32::MIN] {
        assert_err(target_os("os", bad), "os", Problem::UnknownEnumValue(bad));
        assert_err(
            optional_target_os("os", bad),
            "os",
            Problem::UnknownEnumValue(bad),
        );
    }
}

#[test]
fn revocation_reasons_keep_their_rfc5280_codes() {
    for reason in RevocationReason::ALL {
        let proto = v1::RevocationReason::from(reason);
        assert_eq!(proto as i32, i32::from(reason.code()), "{reason}");
        assert_eq!(RevocationReason::from(proto), reason);
        assert_eq!(revocation_reason("reason", proto as i32), Ok(reason));
    }
    assert_eq!(
        revocation_reason("reason", 0),
        Ok(RevocationReason::Unspecified)
    );
    // 2 (cACompromise), 7 (unused), 8 (removeFromCRL), 10 (aACompromise) are not in the contract.
    for bad in [2, 7, 8, 10, -1, 1000] {
        assert_err(
            revocation_reason("reason", bad),
            "reason",
            Problem::UnknownEnumValue(bad),
        );
    }
}

#[test]
fn timestamps_convert_both_ways_within_range() {
    let t = time::macros::datetime!(2026-11-03 12:34:56.789 UTC);
    let ts = timestamp_from_time("t", t).expect("in range");
    assert_eq!(ts.seconds, t.unix_timestamp());
    assert_eq!(ts.nanos, 789_000_000);
    assert_eq!(time_from_timestamp("t", &ts), Ok(t));

    // A non-UTC offset is the same instant.
    let jst = t.to_offset(time::macros::offset!(+9));
    assert_eq!(timestamp_from_time("t", jst), Ok(ts));

    // The extremes of the proto range.
    let min = Timestamp {
        seconds: MIN_TIMESTAMP_SECONDS,
        nanos: 0,
    };
    let max = Timestamp {
        seconds: MAX_TIMESTAMP_SECONDS,
        nanos: 999_999_999,
    };
    for ts in [min, max] {
        let t = time_from_timestamp("t", &ts).expect("in range");
        assert_eq!(timestamp_from_time("t", t), Ok(ts));
    }
    assert_eq!(time_from_timestamp("t", &min).map(|t| t.year()), Ok(1));
    assert_eq!(time_from_timestamp("t", &max).map(|t| t.year()), Ok(9999));
}

#[test]
fn out_of_range_timestamps_are_rejected() {
    for (seconds, nanos) in [
        (MIN_TIMESTAMP_SECONDS - 1, 0),
        (MAX_TIMESTAMP_SECONDS + 1, 0),
        (0, -1),
        (0, 1_000_000_000),
        (i64::MAX, 0),
        (i64::MIN, 0),
    ] {
        assert_err(
            time_from_timestamp("not_after", &Timestamp { seconds, nanos }),
            "not_after",
            Problem::InvalidTimestamp,
        );
    }
    // Year 0 and negative years exist in `time` but not in the proto.
    let year_zero = time::macros::datetime!(0000-06-01 0:00 UTC);
    assert_err(
        timestamp_from_time("not_before", year_zero),
        "not_before",
        Problem::InvalidTimestamp,
    );
    let negative = time::macros::datetime!(-0001-01-01 0:00 UTC);
    assert_err(
        timestamp_from_time("x", negative),
        "x",
        Problem::InvalidTimestamp,
    );
}

#[test]
fn convert_error_into_status_is_invalid_argument_naming_the_field() {
    let status = tonic::Status::from(ConvertError::new("person.email", Problem::InvalidEmail));
    assert_eq!(status.code(), tonic::Code::InvalidArgument);
    assert!(status.message().contains("`person.email`"));
}

#[test]
fn within_builds_dotted_paths() {
    let err = ConvertError::new("family_name", Problem::Missing).within("person");
    assert_eq!(err.field, "person.family_name");
    assert_eq!(
        err.to_string(),
        "`person.family_name` is required but missing"
    );
    assert_eq!(err.within("a").field, "a.person.family_name");
}

// ------------------------------------------------------------------ Facility, Person, Device

#[test]
fn facility_converts_and_keeps_japanese_intact() {
    let f = domain::Facility::try_from(facility()).expect("valid");
    assert_eq!(f.id, "fac-0001");
    assert_eq!(f.name, "豊田訪問看護ステーション");
    assert_eq!(f.prefecture, "愛知県");
    assert_eq!(f.city, "豊田市");
    assert_eq!(f.kind, "訪問看護");
    assert_eq!(v1::Facility::from(f), facility());
}

#[test]
fn facility_errors_name_the_field() {
    let with = |edit: fn(&mut v1::Facility)| {
        let mut f = facility();
        edit(&mut f);
        domain::Facility::try_from(f)
    };
    assert_err(with(|f| f.id.clear()), "id", Problem::Missing);
    assert_err(with(|f| f.id = "施設1".into()), "id", Problem::InvalidId);
    assert_err(with(|f| f.name.clear()), "name", Problem::Missing);
    assert_err(
        with(|f| f.name = " \u{3000} ".into()),
        "name",
        Problem::Missing,
    );
    assert_err(
        with(|f| f.name = "病院\r\n".into()),
        "name",
        Problem::ControlCharacter { position: 2 },
    );
    assert_err(
        with(|f| f.prefecture = "愛知\u{7f}".into()),
        "prefecture",
        Problem::ControlCharacter { position: 2 },
    );
    assert_err(
        with(|f| f.city = "\u{202e}市".into()),
        "city",
        Problem::ControlCharacter { position: 0 },
    );
    assert_err(
        with(|f| f.kind = "a\u{85}".into()),
        "kind",
        Problem::ControlCharacter { position: 1 },
    );
    // Optional fields may be empty.
    let f = with(|f| {
        f.prefecture.clear();
        f.city.clear();
        f.kind.clear();
    });
    assert!(f.is_ok());
}

#[test]
fn person_converts() {
    let p = domain::Person::try_from(person()).expect("valid");
    assert_eq!(p.display_name(), "山田 花子");
    assert_eq!(p.family_name_kana, "ヤマダ");
    assert_eq!(p.email, "hanako.yamada@example.jp");
    assert_eq!(v1::Person::from(p), person());
}

#[test]
fn person_errors_name_the_field() {
    let with = |edit: fn(&mut v1::Person)| {
        let mut p = person();
        edit(&mut p);
        domain::Person::try_from(p)
    };
    assert_err(with(|p| p.id.clear()), "id", Problem::Missing);
    assert_err(with(|p| p.id = "a b".into()), "id", Problem::InvalidId);
    assert_err(
        with(|p| p.family_name.clear()),
        "family_name",
        Problem::Missing,
    );
    assert_err(
        with(|p| p.given_name = "花\t子".into()),
        "given_name",
        Problem::ControlCharacter { position: 1 },
    );
    assert_err(
        with(|p| p.family_name_kana = "\u{1b}[31m".into()),
        "family_name_kana",
        Problem::ControlCharacter { position: 0 },
    );
    assert_err(
        with(|p| p.given_name_kana = "ハナコ\u{2066}".into()),
        "given_name_kana",
        Problem::ControlCharacter { position: 3 },
    );
    assert_err(
        with(|p| p.job = "看護師\n".into()),
        "job",
        Problem::ControlCharacter { position: 3 },
    );
    assert_err(with(|p| p.email.clear()), "email", Problem::Missing);
    for bad in [
        "no-at.example.jp",
        "two@@example.jp",
        "a@b@c",
        "@example.jp",
        "hanako@",
        "hanako @example.jp",
        "hanako@exa\u{3000}mple.jp",
    ] {
        let mut p = person();
        p.email = bad.into();
        assert_err(domain::Person::try_from(p), "email", Problem::InvalidEmail);
    }
    assert_err(
        with(|p| p.email = "a\n@b".into()),
        "email",
        Problem::ControlCharacter { position: 1 },
    );
    // Optional fields may be empty; a Japanese local part is accepted.
    let p = with(|p| {
        p.given_name.clear();
        p.family_name_kana.clear();
        p.given_name_kana.clear();
        p.job.clear();
        p.email = "山田@example.jp".into();
    })
    .expect("valid");
    assert_eq!(p.display_name(), "山田");
}

#[test]
fn device_converts() {
    let d = domain::Device::try_from(device()).expect("valid");
    assert_eq!(d.id, "dev_7.a");
    assert_eq!(d.os, TargetOs::Ios);
    assert_eq!(d.remark, "業務用 iPhone");
    assert_eq!(v1::Device::from(d), device());
}

#[test]
fn device_errors_name_the_field() {
    let with = |edit: fn(&mut v1::Device)| {
        let mut d = device();
        edit(&mut d);
        domain::Device::try_from(d)
    };
    assert_err(with(|d| d.id.clear()), "id", Problem::Missing);
    assert_err(with(|d| d.os = 0), "os", Problem::Unspecified);
    assert_err(with(|d| d.os = 9), "os", Problem::UnknownEnumValue(9));
    assert_err(
        with(|d| d.remark = "line\nbreak".into()),
        "remark",
        Problem::ControlCharacter { position: 4 },
    );
    assert!(with(|d| d.remark.clear()).is_ok());
}

// ------------------------------------------------------------------ requests

#[test]
fn create_ticket_converts() {
    let c = CreateTicket::try_from(create_request()).expect("valid");
    assert_eq!(c.enrollee.facility.name, "豊田訪問看護ステーション");
    assert_eq!(c.enrollee.person.family_name, "山田");
    assert_eq!(c.enrollee.device.os, TargetOs::Ios);
    assert_eq!(c.profile, None);
    assert_eq!(c.approved_by, "事務局 佐藤");
    assert_eq!(v1::CreateTicketRequest::from(c), create_request());

    let mut req = create_request();
    req.profile = "rsa-2048".into();
    let c = CreateTicket::try_from(req).expect("valid");
    assert_eq!(c.profile.as_deref(), Some("rsa-2048"));
}

#[test]
fn create_ticket_errors_carry_dotted_paths() {
    let with = |edit: fn(&mut v1::CreateTicketRequest)| {
        let mut r = create_request();
        edit(&mut r);
        CreateTicket::try_from(r)
    };
    assert_err(with(|r| r.facility = None), "facility", Problem::Missing);
    assert_err(with(|r| r.person = None), "person", Problem::Missing);
    assert_err(with(|r| r.device = None), "device", Problem::Missing);
    assert_err(
        with(|r| {
            if let Some(p) = r.person.as_mut() {
                p.family_name.clear();
            }
        }),
        "person.family_name",
        Problem::Missing,
    );
    assert_err(
        with(|r| {
            if let Some(f) = r.facility.as_mut() {
                f.id = "a/b".into();
            }
        }),
        "facility.id",
        Problem::InvalidId,
    );
    assert_err(
        with(|r| {
            if let Some(d) = r.device.as_mut() {
                d.os = 0;
            }
        }),
        "device.os",
        Problem::Unspecified,
    );
    assert_err(
        with(|r| r.profile = "rsa 2048".into()),
        "profile",
        Problem::InvalidId,
    );
    assert_err(
        with(|r| r.approved_by.clear()),
        "approved_by",
        Problem::Missing,
    );
    assert_err(
        with(|r| r.approved_by = "佐藤\u{0}".into()),
        "approved_by",
        Problem::ControlCharacter { position: 2 },
    );
}

#[test]
fn renewal_needs_a_serial_and_no_approval() {
    let renewal = CreateTicket::try_from(v1::CreateTicketRequest {
        approved_by: String::new(),
        renews_serial: "0a1b2c".into(),
        ..create_request()
    })
    .expect("a renewal needs no approved_by");
    assert_eq!(renewal.renews_serial.as_deref(), Some("0a1b2c"));
    assert_eq!(renewal.approved_by, "");
    assert_eq!(
        v1::CreateTicketRequest::from(renewal).renews_serial,
        "0a1b2c"
    );
    let mut upper = create_request();
    upper.renews_serial = "0A1B".into();
    assert_err(
        CreateTicket::try_from(upper),
        "renews_serial",
        Problem::NotLowercaseHex,
    );
    assert_eq!(
        CreateTicket::try_from(create_request())
            .expect("valid")
            .renews_serial,
        None
    );
}

#[test]
fn redeem_ticket_converts_and_redacts_the_password() {
    let r = RedeemTicket::try_from(redeem_request()).expect("valid");
    assert_eq!(r.number, "01234567");
    assert_eq!(r.password.as_str(), "98765432");
    assert_eq!(r.os, None);
    assert_eq!(r.keystore_profile, None);
    let debug = format!("{r:?}");
    assert!(!debug.contains("98765432"), "{debug}");
    assert!(debug.contains("<redacted>"), "{debug}");
    assert!(debug.contains("01234567"), "{debug}");

    let mut req = redeem_request();
    req.os = v1::TargetOs::Windows as i32;
    req.keystore_profile = "windows-legacy".into();
    let r = RedeemTicket::try_from(req).expect("valid");
    assert_eq!(r.os, Some(TargetOs::Windows));
    assert_eq!(r.keystore_profile.as_deref(), Some("windows-legacy"));
}

#[test]
fn redeem_ticket_errors_name_the_field() {
    let with = |edit: fn(&mut v1::RedeemTicketRequest)| {
        let mut r = redeem_request();
        edit(&mut r);
        RedeemTicket::try_from(r)
    };
    assert_err(with(|r| r.number.clear()), "number", Problem::Missing);
    assert_err(
        with(|r| r.number = "1234".into()),
        "number",
        Problem::NotEightDigits,
    );
    assert_err(with(|r| r.password.clear()), "password", Problem::Missing);
    assert_err(
        with(|r| r.password = "9876543a".into()),
        "password",
        Problem::NotEightDigits,
    );
    assert_err(with(|r| r.os = 77), "os", Problem::UnknownEnumValue(77));
    assert_err(
        with(|r| r.keystore_profile = "windows legacy".into()),
        "keystore_profile",
        Problem::InvalidId,
    );
}

#[test]
fn generated_debug_of_secret_messages_is_redacted() {
    let req = redeem_request();
    let debug = format!("{req:?}");
    assert!(!debug.contains("98765432"), "{debug}");
    assert!(debug.contains("01234567"), "{debug}");

    let resp = v1::CreateTicketResponse {
        number: "11112222".into(),
        password: "33334444".into(),
        expires_at: None,
        ticket: None,
    };
    let debug = format!("{resp:?}");
    assert!(!debug.contains("33334444"), "{debug}");
    assert!(debug.contains("11112222"), "{debug}");

    let resp = v1::RedeemTicketResponse {
        pkcs12: vec![0x30, 0x82, 0xab, 0xcd],
        bundle_password: "7k2m-q9xd-4hbt-0wze".into(),
        ..Default::default()
    };
    let debug = format!("{resp:?}");
    assert!(debug.contains("<4 bytes>"), "{debug}");
    assert!(!debug.contains("7k2m"), "{debug}");
    assert!(!debug.contains("171"), "{debug}"); // 0xab printed as a number would be 171

    let chunk = v1::BackupChunk { data: vec![7; 3] };
    assert_eq!(format!("{chunk:?}"), "BackupChunk { data: <3 bytes> }");
}

#[test]
fn revoke_targets_convert() {
    use v1::revoke_request::Target;
    let cases = [
        (
            Target::Serial("0abc".into()),
            RevokeTarget::Serial("0abc".into()),
        ),
        (
            Target::DeviceId("d1".into()),
            RevokeTarget::Device("d1".into()),
        ),
        (
            Target::PersonId("p1".into()),
            RevokeTarget::Person("p1".into()),
        ),
        (
            Target::FacilityId("f1".into()),
            RevokeTarget::Facility("f1".into()),
        ),
    ];
    for (proto, domain) in cases {
        assert_eq!(
            RevokeTarget::try_from(Some(proto.clone())),
            Ok(domain.clone())
        );
        assert_eq!(Target::from(domain), proto);
    }
    assert_err(RevokeTarget::try_from(None), "target", Problem::Missing);
    assert_err(
        RevokeTarget::try_from(Some(Target::Serial("0ABC".into()))),
        "serial",
        Problem::NotLowercaseHex,
    );
    assert_err(
        RevokeTarget::try_from(Some(Target::DeviceId(String::new()))),
        "device_id",
        Problem::Missing,
    );
    assert_err(
        RevokeTarget::try_from(Some(Target::PersonId("a b".into()))),
        "person_id",
        Problem::InvalidId,
    );
    assert_err(
        RevokeTarget::try_from(Some(Target::FacilityId("施設".into()))),
        "facility_id",
        Problem::InvalidId,
    );
}

#[test]
fn revoke_request_converts() {
    let t = time::macros::datetime!(2026-10-01 09:00 UTC);
    let req = v1::RevokeRequest {
        target: Some(v1::revoke_request::Target::FacilityId("fac-0001".into())),
        reason: v1::RevocationReason::CessationOfOperation as i32,
        invalidity_date: Some(timestamp_from_time("t", t).expect("in range")),
    };
    let r = Revoke::try_from(req).expect("valid");
    assert_eq!(r.target, RevokeTarget::Facility("fac-0001".into()));
    assert_eq!(r.reason, RevocationReason::CessationOfOperation);
    assert_eq!(r.invalidity_date, Some(t));

    let bare = v1::RevokeRequest {
        target: Some(v1::revoke_request::Target::Serial("ff".into())),
        ..Default::default()
    };
    let r = Revoke::try_from(bare.clone()).expect("valid");
    assert_eq!(r.reason, RevocationReason::Unspecified);
    assert_eq!(r.invalidity_date, None);

    assert_err(
        Revoke::try_from(v1::RevokeRequest {
            target: None,
            ..bare.clone()
        }),
        "target",
        Problem::Missing,
    );
    assert_err(
        Revoke::try_from(v1::RevokeRequest {
            reason: 2,
            ..bare.clone()
        }),
        "reason",
        Problem::UnknownEnumValue(2),
    );
    assert_err(
        Revoke::try_from(v1::RevokeRequest {
            invalidity_date: Some(Timestamp::default()),
            ..bare.clone()
        }),
        "invalidity_date",
        Problem::ZeroTimestamp,
    );
    assert_err(
        Revoke::try_from(v1::RevokeRequest {
            invalidity_date: Some(Timestamp {
                seconds: 1,
                nanos: -5,
            }),
            ..bare
        }),
        "invalidity_date",
        Problem::InvalidTimestamp,
    );
}

#[test]
fn list_certificates_converts() {
    let l = ListCertificates::try_from(v1::ListCertificatesRequest::default()).expect("valid");
    assert_eq!(
        l,
        ListCertificates {
            facility_id: None,
            person_id: None,
            device_id: None,
            status: None,
            page_size: 0,
            page_token: None,
        }
    );
    let req = v1::ListCertificatesRequest {
        facility_id: "f".into(),
        person_id: "p".into(),
        device_id: "d".into(),
        status: v1::CertificateState::Revoked as i32,
        page_size: 50,
        page_token: "AbC+/=".into(),
        expiring_before: None,
    };
    let l = ListCertificates::try_from(req.clone()).expect("valid");
    assert_eq!(l.facility_id.as_deref(), Some("f"));
    assert_eq!(l.person_id.as_deref(), Some("p"));
    assert_eq!(l.device_id.as_deref(), Some("d"));
    assert_eq!(l.status, Some(v1::CertificateState::Revoked));
    assert_eq!(l.page_size, 50);
    assert_eq!(l.page_token.as_deref(), Some("AbC+/="));

    let with = |edit: fn(&mut v1::ListCertificatesRequest)| {
        let mut r = req.clone();
        edit(&mut r);
        ListCertificates::try_from(r)
    };
    assert_err(
        with(|r| r.facility_id = "a b".into()),
        "facility_id",
        Problem::InvalidId,
    );
    assert_err(
        with(|r| r.person_id = "a/b".into()),
        "person_id",
        Problem::InvalidId,
    );
    assert_err(
        with(|r| r.device_id = "é".into()),
        "device_id",
        Problem::InvalidId,
    );
    assert_err(
        with(|r| r.status = 4),
        "status",
        Problem::UnknownEnumValue(4),
    );
    assert_err(
        with(|r| r.page_token = "a b".into()),
        "page_token",
        Problem::NotPrintableAscii,
    );
}

// ------------------------------------------------------------------ properties

/// Text a registration form can legitimately hold: kanji, kana, ASCII, the ideographic space.
fn text() -> impl Strategy<Value = String> {
    "[ぁ-んァ-ン一-龥a-zA-Z0-9 　・ー()（）-]{0,20}"
}

/// Required text: at least one visible character.
fn required_text() -> impl Strategy<Value = String> {
    ("[一-龥a-zA-Z]", text()).prop_map(|(a, b)| format!("{a}{b}"))
}

fn id() -> impl Strategy<Value = String> {
    "[A-Za-z0-9._:-]{1,64}"
}

fn email() -> impl Strategy<Value = String> {
    "[a-z0-9._+-]{1,20}@[a-z0-9.-]{1,20}"
}

fn domain_os() -> impl Strategy<Value = TargetOs> {
    prop::sample::select(TargetOs::ALL.to_vec())
}

prop_compose! {
    fn domain_facility()(id in id(), name in required_text(), prefecture in text(),
                         city in text(), kind in text()) -> domain::Facility {
        domain::Facility { id, name, prefecture, city, kind }
    }
}

prop_compose! {
    fn domain_person()(id in id(), family_name in required_text(), given_name in text(),
                       family_name_kana in text(), given_name_kana in text(), job in text(),
                       email in email()) -> domain::Person {
        domain::Person { id, family_name, given_name, family_name_kana, given_name_kana, job, email }
    }
}

prop_compose! {
    fn domain_device()(id in id(), os in domain_os(), remark in text()) -> domain::Device {
        domain::Device { id, os, remark }
    }
}

/// Encodes and decodes a message, as the wire does.
fn over_the_wire<M: prost::Message + Default>(m: &M) -> M {
    M::decode(m.encode_to_vec().as_slice()).expect("own encoding decodes")
}

proptest! {
    #[test]
    fn arbitrary_strings_never_panic(s in any::<String>(), n in any::<i32>()) {
        let _ = parse_id("id", &s);
        let _ = parse_optional_id("id", &s);
        let _ = parse_ticket_number(&s);
        let _ = parse_ticket_password(&s);
        let _ = parse_serial(&s);
        let _ = target_os("os", n);
        let _ = optional_target_os("os", n);
        let _ = revocation_reason("reason", n);
        let _ = domain::Facility::try_from(v1::Facility {
            id: s.clone(), name: s.clone(), prefecture: s.clone(), city: s.clone(), kind: s.clone(),
        });
        let _ = domain::Person::try_from(v1::Person {
            id: s.clone(), family_name: s.clone(), given_name: s.clone(),
            family_name_kana: s.clone(), given_name_kana: s.clone(), job: s.clone(),
            email: s.clone(),
        });
        let _ = domain::Device::try_from(v1::Device { id: s.clone(), os: n, remark: s.clone() });
        let _ = RedeemTicket::try_from(v1::RedeemTicketRequest {
            number: s.clone(), password: s.clone(), os: n, keystore_profile: s.clone(),
        });
        let _ = ListCertificates::try_from(v1::ListCertificatesRequest {
            facility_id: s.clone(), person_id: s.clone(), device_id: s.clone(), status: n,
            page_size: 0, page_token: s.clone(), expiring_before: None,
        });
        let _ = Revoke::try_from(v1::RevokeRequest {
            target: Some(v1::revoke_request::Target::Serial(s.clone())), reason: n,
            invalidity_date: None,
        });
    }

    #[test]
    fn arbitrary_timestamps_never_panic(seconds in any::<i64>(), nanos in any::<i32>()) {
        if let Ok(t) = time_from_timestamp("t", &Timestamp { seconds, nanos }) {
            prop_assert_eq!(timestamp_from_time("t", t), Ok(Timestamp { seconds, nanos }));
        }
    }

    #[test]
    fn valid_timestamps_round_trip(
        seconds in MIN_TIMESTAMP_SECONDS..=MAX_TIMESTAMP_SECONDS,
        nanos in 0..1_000_000_000i32,
    ) {
        let ts = Timestamp { seconds, nanos };
        let t = time_from_timestamp("t", &ts).expect("in range");
        prop_assert_eq!(timestamp_from_time("t", t), Ok(ts));
    }

    #[test]
    fn serials_round_trip(bytes in prop::collection::vec(any::<u8>(), 1..=20)) {
        let hex: String = bytes.iter().map(|b| format!("{b:02x}")).collect();
        prop_assert_eq!(parse_serial(&hex), Ok(hex.clone()));
        if hex.bytes().any(|b| b.is_ascii_alphabetic()) {
            prop_assert_eq!(
                parse_serial(&hex.to_uppercase()).map_err(|e| e.problem),
                Err(Problem::NotLowercaseHex)
            );
        }
    }

    #[test]
    fn facility_round_trips(f in domain_facility()) {
        let proto = over_the_wire(&v1::Facility::from(f.clone()));
        prop_assert_eq!(domain::Facility::try_from(proto), Ok(f));
    }

    #[test]
    fn person_round_trips(p in domain_person()) {
        let proto = over_the_wire(&v1::Person::from(p.clone()));
        prop_assert_eq!(domain::Person::try_from(proto), Ok(p));
    }

    #[test]
    fn device_round_trips(d in domain_device()) {
        let proto = over_the_wire(&v1::Device::from(d.clone()));
        prop_assert_eq!(domain::Device::try_from(proto), Ok(d));
    }

    #[test]
    fn create_ticket_round_trips(
        facility in domain_facility(), person in domain_person(), device in domain_device(),
        profile in prop::option::of(id()), approved_by in required_text(),
        renews_serial in prop::option::of("[0-9a-f]{1,40}"),
    ) {
        let c = CreateTicket {
            enrollee: domain::Enrollee { facility, person, device },
            profile,
            approved_by,
            renews_serial,
        };
        let proto = over_the_wire(&v1::CreateTicketRequest::from(c.clone()));
        prop_assert_eq!(CreateTicket::try_from(proto), Ok(c));
    }

    #[test]
    fn reasons_round_trip(reason in prop::sample::select(RevocationReason::ALL.to_vec())) {
        let code = v1::RevocationReason::from(reason) as i32;
        prop_assert_eq!(revocation_reason("reason", code), Ok(reason));
    }

    #[test]
    fn os_round_trips(os in domain_os()) {
        prop_assert_eq!(TargetOs::try_from(v1::TargetOs::from(os)), Ok(os));
    }

    #[test]
    fn eight_digit_numbers_and_passwords_are_accepted(s in "[0-9]{8}") {
        prop_assert_eq!(parse_ticket_number(&s), Ok(s.clone()));
        prop_assert_eq!(parse_ticket_password(&s).map(|p| p.as_str().to_owned()), Ok(s));
    }

    /// The password error is one constant for every malformed non-empty input, so it cannot
    /// contain the input; and it contains no digit at all.
    #[test]
    fn password_error_never_contains_the_input(
        s in prop_oneof![
            "[0-9]{1,7}",
            "[0-9]{9,30}",
            "[0-9]{0,7}[^0-9][0-9]{0,7}",
            any::<String>(),
        ]
    ) {
        prop_assume!(!s.is_empty() && !is_eight_digits(&s));
        let err = parse_ticket_password(&s).expect_err("malformed");
        prop_assert_eq!(&err, &ConvertError::new("password", Problem::NotEightDigits));
        let shown = format!("{err} {err:?} {}", tonic::Status::from(err.clone()).message());
        // No digit at all in what is shown, so no input that has a digit can appear in it
        // (inputs without a digit may coincide with a word of the fixed message, like "`").
        prop_assert!(!shown.bytes().any(|b| b.is_ascii_digit()), "{}", shown);
        if s.bytes().any(|b| b.is_ascii_digit()) {
            prop_assert!(!shown.contains(&s));
        }

        let redeem = RedeemTicket::try_from(v1::RedeemTicketRequest {
            number: "12345678".into(), password: s.clone(), os: 0, keystore_profile: String::new(),
        });
        let err = redeem.expect_err("malformed");
        prop_assert_eq!(err, ConvertError::new("password", Problem::NotEightDigits));
    }

    /// Any character refused in text is reported at its position, whatever surrounds it.
    #[test]
    fn control_characters_are_found(
        before in text(),
        bad in prop_oneof![
            (0u32..0x20).prop_map(|c| char::from_u32(c).unwrap_or('\0')),
            Just('\u{7f}'), Just('\u{85}'), Just('\u{202e}'), Just('\u{2067}'),
        ],
        after in text(),
    ) {
        let mut p = person();
        p.job = format!("{before}{bad}{after}");
        let position = before.chars().count();
        prop_assert_eq!(
            domain::Person::try_from(p),
            Err(ConvertError::new("job", Problem::ControlCharacter { position }))
        );
    }
}
