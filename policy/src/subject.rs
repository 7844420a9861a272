//! Subject templates: `C=JP, O={facility.name}, OU={person.job}, CN={person.display_name}`.
//!
//! A template is literal text with `{placeholder}`s from a fixed set ([`Placeholder`]); `{{`
//! and `}}` stand for literal braces. Anything else in braces is refused when the policy is
//! loaded, so a typo never reaches a certificate.

use std::borrow::Cow;
use std::fmt;

use crate::domain::Enrollee;
use crate::error::PolicyError;
use crate::limits::{FieldError, FieldProblem};
use crate::raw::{RawSubject, require};

/// X.520 upper bound (characters) of commonName, organizationName and
/// organizationalUnitName (RFC 5280 appendix A: ub-common-name, ub-organization-name,
/// ub-organizational-unit-name).
pub const X520_UB_NAME: usize = 64;

/// Longest template source, in characters.
const MAX_TEMPLATE_LEN: usize = 256;

/// A value from the enrollee that a template can insert.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
#[non_exhaustive]
pub enum Placeholder {
    /// `{facility.id}`
    FacilityId,
    /// `{facility.name}`
    FacilityName,
    /// `{facility.prefecture}`
    FacilityPrefecture,
    /// `{facility.city}`
    FacilityCity,
    /// `{facility.kind}`
    FacilityKind,
    /// `{person.id}`
    PersonId,
    /// `{person.family_name}`
    PersonFamilyName,
    /// `{person.given_name}`
    PersonGivenName,
    /// `{person.family_name_kana}`
    PersonFamilyNameKana,
    /// `{person.given_name_kana}`
    PersonGivenNameKana,
    /// `{person.display_name}`: family name, a space, given name ([`crate::domain::Person::display_name`]).
    PersonDisplayName,
    /// `{person.job}`
    PersonJob,
    /// `{person.email}`
    PersonEmail,
    /// `{device.id}`
    DeviceId,
    /// `{device.os}` (`windows`, `macos`, `android`, `ios`).
    DeviceOs,
}

impl Placeholder {
    /// Every placeholder. (`device.remark` is deliberately absent: free text stays out of
    /// certificates.)
    pub const ALL: [Placeholder; 15] = [
        Self::FacilityId,
        Self::FacilityName,
        Self::FacilityPrefecture,
        Self::FacilityCity,
        Self::FacilityKind,
        Self::PersonId,
        Self::PersonFamilyName,
        Self::PersonGivenName,
        Self::PersonFamilyNameKana,
        Self::PersonGivenNameKana,
        Self::PersonDisplayName,
        Self::PersonJob,
        Self::PersonEmail,
        Self::DeviceId,
        Self::DeviceOs,
    ];

    /// The name between the braces (`facility.name`).
    pub fn as_str(self) -> &'static str {
        match self {
            Self::FacilityId => "facility.id",
            Self::FacilityName => "facility.name",
            Self::FacilityPrefecture => "facility.prefecture",
            Self::FacilityCity => "facility.city",
            Self::FacilityKind => "facility.kind",
            Self::PersonId => "person.id",
            Self::PersonFamilyName => "person.family_name",
            Self::PersonGivenName => "person.given_name",
            Self::PersonFamilyNameKana => "person.family_name_kana",
            Self::PersonGivenNameKana => "person.given_name_kana",
            Self::PersonDisplayName => "person.display_name",
            Self::PersonJob => "person.job",
            Self::PersonEmail => "person.email",
            Self::DeviceId => "device.id",
            Self::DeviceOs => "device.os",
        }
    }

    /// Parses the name between the braces.
    pub fn parse(s: &str) -> Option<Self> {
        Self::ALL.into_iter().find(|p| p.as_str() == s)
    }

    /// Whether [`crate::Limits::check_enrollee`] guarantees the value is not empty.
    pub fn is_never_empty(self) -> bool {
        matches!(
            self,
            Self::FacilityId
                | Self::FacilityName
                | Self::PersonId
                | Self::PersonFamilyName
                | Self::PersonDisplayName
                | Self::DeviceId
                | Self::DeviceOs
        )
    }

    /// The value for an enrollee.
    pub fn value(self, e: &Enrollee) -> Cow<'_, str> {
        match self {
            Self::FacilityId => Cow::Borrowed(&e.facility.id),
            Self::FacilityName => Cow::Borrowed(&e.facility.name),
            Self::FacilityPrefecture => Cow::Borrowed(&e.facility.prefecture),
            Self::FacilityCity => Cow::Borrowed(&e.facility.city),
            Self::FacilityKind => Cow::Borrowed(&e.facility.kind),
            Self::PersonId => Cow::Borrowed(&e.person.id),
            Self::PersonFamilyName => Cow::Borrowed(&e.person.family_name),
            Self::PersonGivenName => Cow::Borrowed(&e.person.given_name),
            Self::PersonFamilyNameKana => Cow::Borrowed(&e.person.family_name_kana),
            Self::PersonGivenNameKana => Cow::Borrowed(&e.person.given_name_kana),
            Self::PersonDisplayName => Cow::Owned(e.person.display_name()),
            Self::PersonJob => Cow::Borrowed(&e.person.job),
            Self::PersonEmail => Cow::Borrowed(&e.person.email),
            Self::DeviceId => Cow::Borrowed(&e.device.id),
            Self::DeviceOs => Cow::Borrowed(e.device.os.as_str()),
        }
    }

    fn known_list() -> String {
        Self::ALL
            .iter()
            .map(|p| p.as_str())
            .collect::<Vec<_>>()
            .join(", ")
    }
}

impl fmt::Display for Placeholder {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "{{{}}}", self.as_str())
    }
}

#[derive(Debug, Clone, PartialEq, Eq)]
enum Segment {
    Literal(String),
    Field(Placeholder),
}

/// A parsed template: literal text and placeholders.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Template {
    source: String,
    segments: Vec<Segment>,
}

impl Template {
    /// Parses a template; `field` (the dotted path of the key) is named in errors.
    pub fn parse(field: &str, source: &str) -> Result<Self, PolicyError> {
        if source.chars().count() > MAX_TEMPLATE_LEN {
            return Err(PolicyError::invalid(
                field,
                format!("template longer than {MAX_TEMPLATE_LEN} characters"),
            ));
        }
        if let Some(c) = source.chars().find(|c| c.is_control()) {
            return Err(PolicyError::invalid(
                field,
                format!("template contains the control character {c:?}"),
            ));
        }
        let mut segments = Vec::new();
        let mut literal = String::new();
        let mut chars = source.chars().peekable();
        while let Some(c) = chars.next() {
            match c {
                '{' if chars.peek() == Some(&'{') => {
                    chars.next();
                    literal.push('{');
                }
                '}' if chars.peek() == Some(&'}') => {
                    chars.next();
                    literal.push('}');
                }
                '{' => {
                    let mut name = String::new();
                    let mut closed = false;
                    for c in chars.by_ref() {
                        if c == '}' {
                            closed = true;
                            break;
                        }
                        name.push(c);
                    }
                    if !closed || name.contains('{') {
                        return Err(PolicyError::invalid(
                            field,
                            "unbalanced `{` in template (write `{{` for a literal brace)",
                        ));
                    }
                    let placeholder = Placeholder::parse(name.trim()).ok_or_else(|| {
                        PolicyError::UnknownPlaceholder {
                            field: field.to_owned(),
                            placeholder: name.clone(),
                            known: Placeholder::known_list(),
                        }
                    })?;
                    if !literal.is_empty() {
                        segments.push(Segment::Literal(std::mem::take(&mut literal)));
                    }
                    segments.push(Segment::Field(placeholder));
                }
                '}' => {
                    return Err(PolicyError::invalid(
                        field,
                        "unbalanced `}` in template (write `}}` for a literal brace)",
                    ));
                }
                c => literal.push(c),
            }
        }
        if !literal.is_empty() {
            segments.push(Segment::Literal(literal));
        }
        Ok(Self {
            source: source.to_owned(),
            segments,
        })
    }

    /// The template as written in the policy.
    pub fn as_str(&self) -> &str {
        &self.source
    }

    /// The placeholders used, in order.
    pub fn placeholders(&self) -> impl Iterator<Item = Placeholder> + '_ {
        self.segments.iter().filter_map(|s| match s {
            Segment::Field(p) => Some(*p),
            Segment::Literal(_) => None,
        })
    }

    /// Whether the template renders non-empty for every enrollee that passed
    /// [`crate::Limits::check_enrollee`]: it has non-blank literal text or a placeholder for a
    /// required field.
    pub fn never_renders_empty(&self) -> bool {
        self.segments.iter().any(|s| match s {
            Segment::Literal(text) => !text.trim().is_empty(),
            Segment::Field(p) => p.is_never_empty(),
        })
    }

    /// Renders the template for an enrollee; leading and trailing white space is trimmed.
    pub fn render(&self, e: &Enrollee) -> String {
        let mut out = String::new();
        for segment in &self.segments {
            match segment {
                Segment::Literal(text) => out.push_str(text),
                Segment::Field(p) => out.push_str(&p.value(e)),
            }
        }
        match out.trim() {
            trimmed if trimmed.len() == out.len() => out,
            trimmed => trimmed.to_owned(),
        }
    }
}

/// The subject DN of an end-entity profile.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct SubjectTemplate {
    /// countryName: two upper-case ASCII letters (ISO 3166-1 alpha-2), `JP` by default.
    pub country: String,
    /// organizationName template.
    pub organization: Template,
    /// organizationalUnitName template; omitted from the DN when it renders empty.
    pub organizational_unit: Template,
    /// commonName template.
    pub common_name: Template,
}

/// A rendered subject DN (`C, O, OU, CN`, in that order in the certificate).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Subject {
    /// countryName.
    pub country: String,
    /// organizationName.
    pub organization: String,
    /// organizationalUnitName; `None` when the template rendered empty.
    pub organizational_unit: Option<String>,
    /// commonName.
    pub common_name: String,
}

impl SubjectTemplate {
    pub(crate) fn from_raw(raw: RawSubject, path: &str) -> Result<Self, PolicyError> {
        let country_field = format!("{path}.country");
        let country = require(raw.country, &country_field)?;
        if country.len() != 2 || !country.bytes().all(|b| b.is_ascii_uppercase()) {
            return Err(PolicyError::invalid(
                country_field,
                format!(
                    "`{}` is not a two-letter upper-case country code (ISO 3166-1 alpha-2, e.g. JP)",
                    country.escape_debug()
                ),
            ));
        }
        let template = |value: Option<String>, key: &str, must_render: bool| {
            let field = format!("{path}.{key}");
            let t = Template::parse(&field, &require(value, &field)?)?;
            if must_render && !t.never_renders_empty() {
                return Err(PolicyError::invalid(
                    field,
                    "may render empty: include literal text or one of {facility.name}, \
                     {facility.id}, {person.display_name}, {person.family_name}, {person.id}, \
                     {device.id}, {device.os}",
                ));
            }
            Ok(t)
        };
        Ok(Self {
            country,
            organization: template(raw.organization, "organization", true)?,
            organizational_unit: template(raw.organizational_unit, "organizational_unit", false)?,
            common_name: template(raw.common_name, "common_name", true)?,
        })
    }

    /// Renders the subject for an enrollee. The organizational unit is `None` when it renders
    /// empty. See [`SubjectTemplate::render_checked`] for the X.520 length bounds.
    pub fn render(&self, enrollee: &Enrollee) -> Subject {
        let ou = self.organizational_unit.render(enrollee);
        Subject {
            country: self.country.clone(),
            organization: self.organization.render(enrollee),
            organizational_unit: (!ou.is_empty()).then_some(ou),
            common_name: self.common_name.render(enrollee),
        }
    }

    /// [`SubjectTemplate::render`], then checks that O and CN are not empty and that O, OU and
    /// CN are within the X.520 upper bound of 64 characters (linters and some importers refuse
    /// longer ones). Errors name `subject.organization`, `subject.organizational_unit` or
    /// `subject.common_name`.
    pub fn render_checked(&self, enrollee: &Enrollee) -> Result<Subject, FieldError> {
        let subject = self.render(enrollee);
        let attrs = [
            ("subject.organization", Some(&subject.organization)),
            (
                "subject.organizational_unit",
                subject.organizational_unit.as_ref(),
            ),
            ("subject.common_name", Some(&subject.common_name)),
        ];
        for (field, value) in attrs {
            let Some(value) = value else { continue };
            if value.is_empty() {
                return Err(FieldError::new(field, FieldProblem::Empty));
            }
            let len = value.chars().count();
            if len > X520_UB_NAME {
                return Err(FieldError::new(
                    field,
                    FieldProblem::SubjectTooLong {
                        len,
                        max: X520_UB_NAME,
                    },
                ));
            }
        }
        Ok(subject)
    }
}
