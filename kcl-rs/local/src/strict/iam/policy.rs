//! IAM identity-based policy documents: parsing, placeholders, and the matching of one
//! (action, resource) pair against the statements.
//!
//! What is modelled: `Version`, `Statement` (one object or an array), `Sid`, `Effect`
//! (`Allow`/`Deny`), `Action` or `NotAction` (a string or an array, `*` and `?`
//! wildcards, action names compared case-insensitively as IAM does) and `Resource` (a
//! string or an array, the same wildcards, compared case-sensitively). What is not:
//! `Condition`, `NotResource` and `Principal` are *rejected* when a policy is parsed,
//! never ignored: ignoring a condition would silently allow (or, on a Deny, silently
//! not deny) what AWS would decide otherwise, and a test would then prove nothing.

use serde_json::Value;

/// Why a policy document was refused.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum PolicyError {
    /// Not JSON, or not shaped like a policy document.
    #[error("invalid IAM policy: {0}")]
    Invalid(String),
    /// A policy element the strict layer does not evaluate (see the module docs).
    #[error("IAM policy element {0:?} is not supported by the strict local AWS")]
    Unsupported(String),
    /// The Markdown file has no such section, or the section has no ```json block.
    #[error("no IAM policy under a heading starting with {0:?}")]
    NoSection(String),
}

/// Whether a statement allows or denies.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Effect {
    /// `"Effect": "Allow"`.
    Allow,
    /// `"Effect": "Deny"`.
    Deny,
}

/// Which actions a statement is about.
#[derive(Debug, Clone, PartialEq, Eq)]
enum Actions {
    /// `Action`: the listed patterns.
    Listed(Vec<String>),
    /// `NotAction`: every action but the listed patterns.
    AllBut(Vec<String>),
}

/// One statement of a policy.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Statement {
    /// The `Sid`, if any.
    pub sid: Option<String>,
    /// Allow or Deny.
    pub effect: Effect,
    actions: Actions,
    resources: Vec<String>,
}

/// An identity-based IAM policy: the statements of one document.
#[derive(Debug, Clone, PartialEq, Eq, Default)]
pub struct Policy {
    statements: Vec<Statement>,
}

/// What a policy says about one (action, resource) pair, in IAM's order of evaluation:
/// an explicit Deny wins over any Allow; without either the request is implicitly denied.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Decision {
    /// Some Allow statement matches and no Deny does.
    Allowed,
    /// A Deny statement matches.
    ExplicitlyDenied,
    /// No statement matches.
    ImplicitlyDenied,
}

/// Values for the placeholders of the project's documented policies (`REGION`,
/// `ACCOUNT`, `STREAM`, `APP`, `KEY_ID`), substituted in `Resource` values where they
/// stand as whole words.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Placeholders {
    /// `REGION`, e.g. `us-east-1`.
    pub region: String,
    /// `ACCOUNT`, the 12-digit account id.
    pub account: String,
    /// `STREAM`, the Kinesis stream name.
    pub stream: String,
    /// `APP`, the application name (also the lease table's name).
    pub app: String,
    /// `KEY_ID`, the stream's KMS key id.
    pub key_id: String,
}

impl Placeholders {
    fn value_of(&self, word: &str) -> Option<&str> {
        match word {
            "REGION" => Some(&self.region),
            "ACCOUNT" => Some(&self.account),
            "STREAM" => Some(&self.stream),
            "APP" => Some(&self.app),
            "KEY_ID" => Some(&self.key_id),
            _ => None,
        }
    }

    /// `text` with every placeholder that stands as a whole word (delimited by anything
    /// but a letter, digit or `_`) replaced: `table/APP-Workers` becomes
    /// `table/orders-Workers`, while `APPLE` stays as it is.
    pub fn substitute(&self, text: &str) -> String {
        let mut out = String::with_capacity(text.len());
        let mut word = String::new();
        let flush = |word: &mut String, out: &mut String| {
            out.push_str(self.value_of(word).unwrap_or(word));
            word.clear();
        };
        for c in text.chars() {
            if c.is_ascii_alphanumeric() || c == '_' {
                word.push(c);
            } else {
                flush(&mut word, &mut out);
                out.push(c);
            }
        }
        flush(&mut word, &mut out);
        out
    }
}

impl Policy {
    /// Parses a policy document (see the module docs for what is supported).
    pub fn parse(json: &str) -> Result<Policy, PolicyError> {
        let document: Value =
            serde_json::from_str(json).map_err(|e| PolicyError::Invalid(e.to_string()))?;
        let Value::Object(document) = document else {
            return Err(PolicyError::Invalid("not a JSON object".into()));
        };
        for key in document.keys() {
            if !matches!(key.as_str(), "Version" | "Id" | "Statement") {
                return Err(PolicyError::Unsupported(key.clone()));
            }
        }
        let statements = match document.get("Statement") {
            Some(Value::Array(items)) => items.iter().map(parse_statement).collect(),
            Some(item @ Value::Object(_)) => parse_statement(item).map(|s| vec![s]),
            _ => Err(PolicyError::Invalid(
                "Statement must be an object or an array".into(),
            )),
        }?;
        Ok(Policy { statements })
    }

    /// The policy in the ```json block of the Markdown section whose heading starts
    /// with `heading` (`"kcl-rs worker"` finds `## kcl-rs worker (...)`), with the
    /// placeholders of its `Resource` values substituted.
    pub fn from_markdown(
        markdown: &str,
        heading: &str,
        placeholders: &Placeholders,
    ) -> Result<Policy, PolicyError> {
        let json = json_block_under(markdown, heading)
            .ok_or_else(|| PolicyError::NoSection(heading.to_string()))?;
        let mut policy = Policy::parse(&json)?;
        for statement in &mut policy.statements {
            for resource in &mut statement.resources {
                *resource = placeholders.substitute(resource);
            }
        }
        Ok(policy)
    }

    /// The statements, in document order.
    pub fn statements(&self) -> &[Statement] {
        &self.statements
    }

    /// This policy with `action` (e.g. `dynamodb:GetItem`, compared case-insensitively)
    /// taken out of every `Action` list: what a test uses to show that the action is
    /// needed. Statements left with no action are dropped.
    pub fn without_action(&self, action: &str) -> Policy {
        let statements = self
            .statements
            .iter()
            .filter_map(|statement| {
                let mut statement = statement.clone();
                if let Actions::Listed(patterns) = &mut statement.actions {
                    patterns.retain(|p| !p.eq_ignore_ascii_case(action));
                    if patterns.is_empty() {
                        return None;
                    }
                }
                Some(statement)
            })
            .collect();
        Policy { statements }
    }

    /// What this policy decides for `action` (e.g. `dynamodb:PutItem`) on `resource`
    /// (an ARN, or `*` for actions without a resource).
    pub fn decide(&self, action: &str, resource: &str) -> Decision {
        let mut allowed = false;
        for statement in &self.statements {
            if statement.matches(action, resource) {
                match statement.effect {
                    Effect::Deny => return Decision::ExplicitlyDenied,
                    Effect::Allow => allowed = true,
                }
            }
        }
        if allowed {
            Decision::Allowed
        } else {
            Decision::ImplicitlyDenied
        }
    }
}

impl Statement {
    fn matches(&self, action: &str, resource: &str) -> bool {
        let action = action.to_ascii_lowercase();
        let action_matches = |patterns: &[String]| {
            patterns
                .iter()
                .any(|p| wildcard_match(&p.to_ascii_lowercase(), &action))
        };
        let action_ok = match &self.actions {
            Actions::Listed(patterns) => action_matches(patterns),
            Actions::AllBut(patterns) => !action_matches(patterns),
        };
        action_ok && self.resources.iter().any(|p| wildcard_match(p, resource))
    }
}

fn parse_statement(value: &Value) -> Result<Statement, PolicyError> {
    let Value::Object(fields) = value else {
        return Err(PolicyError::Invalid("a statement is not an object".into()));
    };
    for key in fields.keys() {
        if !matches!(
            key.as_str(),
            "Sid" | "Effect" | "Action" | "NotAction" | "Resource"
        ) {
            return Err(PolicyError::Unsupported(key.clone()));
        }
    }
    let sid = fields
        .get("Sid")
        .and_then(Value::as_str)
        .map(str::to_string);
    let effect = match fields.get("Effect").and_then(Value::as_str) {
        Some("Allow") => Effect::Allow,
        Some("Deny") => Effect::Deny,
        other => {
            return Err(PolicyError::Invalid(format!(
                "Effect must be Allow or Deny, not {other:?}"
            )));
        }
    };
    let actions = match (fields.get("Action"), fields.get("NotAction")) {
        (Some(listed), None) => Actions::Listed(strings(listed, "Action")?),
        (None, Some(all_but)) => Actions::AllBut(strings(all_but, "NotAction")?),
        _ => {
            return Err(PolicyError::Invalid(
                "a statement needs exactly one of Action and NotAction".into(),
            ));
        }
    };
    let resources = match fields.get("Resource") {
        Some(resource) => strings(resource, "Resource")?,
        None => return Err(PolicyError::Invalid("a statement needs a Resource".into())),
    };
    Ok(Statement {
        sid,
        effect,
        actions,
        resources,
    })
}

fn strings(value: &Value, element: &str) -> Result<Vec<String>, PolicyError> {
    let invalid = || PolicyError::Invalid(format!("{element} must be a string or strings"));
    match value {
        Value::String(s) => Ok(vec![s.clone()]),
        Value::Array(items) => items
            .iter()
            .map(|item| item.as_str().map(str::to_string).ok_or_else(invalid))
            .collect(),
        _ => Err(invalid()),
    }
}

/// IAM's wildcard match: `*` is any run of characters (also none, also across `:` and
/// `/`), `?` is exactly one character; everything else matches itself.
pub fn wildcard_match(pattern: &str, text: &str) -> bool {
    let pattern: Vec<char> = pattern.chars().collect();
    let text: Vec<char> = text.chars().collect();
    // Greedy matching with backtracking to the last `*`: linear in practice.
    let (mut p, mut t) = (0, 0);
    let mut star: Option<(usize, usize)> = None;
    while t < text.len() {
        if p < pattern.len() && (pattern[p] == '?' || pattern[p] == text[t]) {
            p += 1;
            t += 1;
        } else if p < pattern.len() && pattern[p] == '*' {
            star = Some((p, t));
            p += 1;
        } else if let Some((star_p, star_t)) = star {
            p = star_p + 1;
            t = star_t + 1;
            star = Some((star_p, star_t + 1));
        } else {
            return false;
        }
    }
    pattern[p..].iter().all(|&c| c == '*')
}

/// The body of the first ```json fence in the section whose heading text starts with
/// `heading`, up to the next heading of the same or a higher level.
fn json_block_under(markdown: &str, heading: &str) -> Option<String> {
    let mut lines = markdown.lines();
    let level = loop {
        let line = lines.next()?;
        if let Some((level, text)) = parse_heading(line)
            && text.starts_with(heading)
        {
            break level;
        }
    };
    let mut block: Option<Vec<&str>> = None;
    for line in lines {
        match &mut block {
            None => {
                if let Some((other, _)) = parse_heading(line)
                    && other <= level
                {
                    return None;
                }
                if line.trim_start().starts_with("```json") {
                    block = Some(Vec::new());
                }
            }
            Some(body) => {
                if line.trim_start().starts_with("```") {
                    return Some(body.join("\n"));
                }
                body.push(line);
            }
        }
    }
    None
}

fn parse_heading(line: &str) -> Option<(usize, &str)> {
    let level = line.chars().take_while(|&c| c == '#').count();
    let text = line[level..].strip_prefix(' ')?;
    (level > 0).then_some((level, text.trim()))
}

#[cfg(test)]
mod tests;
