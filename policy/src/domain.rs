//! Domain vocabulary shared by the proto edge and the daemon.
//!
//! These types are deliberately plain: validation of lengths and character sets against the
//! policy limits happens in [`crate::Limits`] (see `Limits::check_*`), so that the same rules
//! apply whichever edge (gRPC, CLI) the data came through.

use std::fmt;

/// The operating system a device bundle is built for (DESIGN §8).
#[derive(
    Debug, Clone, Copy, PartialEq, Eq, Hash, PartialOrd, Ord, serde::Serialize, serde::Deserialize,
)]
#[serde(rename_all = "lowercase")]
pub enum TargetOs {
    /// Windows 10 1709+ / 11 / Server 2019+.
    Windows,
    /// macOS.
    Macos,
    /// Android.
    Android,
    /// iOS / iPadOS.
    Ios,
}

impl TargetOs {
    /// Every OS, in a fixed order.
    pub const ALL: [TargetOs; 4] = [Self::Windows, Self::Macos, Self::Android, Self::Ios];

    /// The lowercase name used in policy files, CLI flags and file names.
    pub fn as_str(self) -> &'static str {
        match self {
            Self::Windows => "windows",
            Self::Macos => "macos",
            Self::Android => "android",
            Self::Ios => "ios",
        }
    }

    /// Parses the lowercase name (`windows`, `macos`, `android`, `ios`).
    pub fn parse(s: &str) -> Option<Self> {
        Self::ALL.into_iter().find(|os| os.as_str() == s)
    }
}

impl fmt::Display for TargetOs {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(self.as_str())
    }
}

/// RFC 5280 CRLReason values that this CA uses. The discriminant is the RFC code.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, serde::Serialize, serde::Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum RevocationReason {
    /// unspecified (0)
    Unspecified = 0,
    /// keyCompromise (1)
    KeyCompromise = 1,
    /// affiliationChanged (3)
    AffiliationChanged = 3,
    /// superseded (4)
    Superseded = 4,
    /// cessationOfOperation (5): usage termination of a facility.
    CessationOfOperation = 5,
    /// certificateHold (6)
    CertificateHold = 6,
    /// privilegeWithdrawn (9)
    PrivilegeWithdrawn = 9,
}

impl RevocationReason {
    /// Every reason, in RFC order.
    pub const ALL: [RevocationReason; 7] = [
        Self::Unspecified,
        Self::KeyCompromise,
        Self::AffiliationChanged,
        Self::Superseded,
        Self::CessationOfOperation,
        Self::CertificateHold,
        Self::PrivilegeWithdrawn,
    ];

    /// The RFC 5280 CRLReason code.
    pub fn code(self) -> u8 {
        self as u8
    }

    /// The reason for an RFC 5280 code, if this CA uses it.
    pub fn from_code(code: u8) -> Option<Self> {
        Self::ALL.into_iter().find(|r| r.code() == code)
    }

    /// Lowercase snake_case name (`key_compromise`, ...), as used on the CLI.
    pub fn as_str(self) -> &'static str {
        match self {
            Self::Unspecified => "unspecified",
            Self::KeyCompromise => "key_compromise",
            Self::AffiliationChanged => "affiliation_changed",
            Self::Superseded => "superseded",
            Self::CessationOfOperation => "cessation_of_operation",
            Self::CertificateHold => "certificate_hold",
            Self::PrivilegeWithdrawn => "privilege_withdrawn",
        }
    }

    /// Parses the snake_case name.
    pub fn parse(s: &str) -> Option<Self> {
        Self::ALL.into_iter().find(|r| r.as_str() == s)
    }
}

impl fmt::Display for RevocationReason {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(self.as_str())
    }
}

/// A facility of the network (hospital, clinic, care office, pharmacy).
#[derive(Debug, Clone, PartialEq, Eq, serde::Serialize, serde::Deserialize)]
pub struct Facility {
    /// Portal-assigned identifier (ASCII, stable).
    pub id: String,
    /// Facility name, Japanese UTF-8 (becomes the subject O).
    pub name: String,
    /// Prefecture (e.g. 愛知県).
    pub prefecture: String,
    /// City (e.g. 豊田市).
    pub city: String,
    /// Facility kind (hospital, clinic, ...), free text.
    pub kind: String,
}

/// A person (staff member) of a facility.
#[derive(Debug, Clone, PartialEq, Eq, serde::Serialize, serde::Deserialize)]
pub struct Person {
    /// Portal-assigned identifier (ASCII, stable).
    pub id: String,
    /// Family name in kanji.
    pub family_name: String,
    /// Given name in kanji.
    pub given_name: String,
    /// Family name in kana.
    pub family_name_kana: String,
    /// Given name in kana.
    pub given_name_kana: String,
    /// Job (becomes the subject OU).
    pub job: String,
    /// E-mail address the ticket is sent to.
    pub email: String,
}

impl Person {
    /// The display name used as subject CN: family name, a space, given name.
    pub fn display_name(&self) -> String {
        if self.given_name.is_empty() {
            self.family_name.clone()
        } else {
            format!("{} {}", self.family_name, self.given_name)
        }
    }
}

/// A device of a person.
#[derive(Debug, Clone, PartialEq, Eq, serde::Serialize, serde::Deserialize)]
pub struct Device {
    /// Portal-assigned identifier (ASCII, stable).
    pub id: String,
    /// The device's OS as registered.
    pub os: TargetOs,
    /// Free-text remark from the registration form.
    pub remark: String,
}

/// The subject of an enrollment: who and what a ticket (and later a certificate) is for.
#[derive(Debug, Clone, PartialEq, Eq, serde::Serialize, serde::Deserialize)]
pub struct Enrollee {
    /// The facility.
    pub facility: Facility,
    /// The person.
    pub person: Person,
    /// The device.
    pub device: Device,
}
