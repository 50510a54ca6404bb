//! Kubernetes label selectors (`app=cart,tier!=canary`, `env in (a,b)`, `env notin (c)`, `key`,
//! `!key`, `==`) with Kubernetes' meaning, and a `*`/`?` glob matcher for names.
//!
//! One difference from the API server: an empty value (`app=`) is refused rather than matching
//! an empty label, since on a command line it is nearly always a slip; so is an empty selector,
//! which would match every pod.

use std::{collections::BTreeMap, fmt, str::FromStr};

use thiserror::Error;

/// Label names and values: 63 characters at most (Kubernetes' limit).
const NAME_MAX: usize = 63;
/// A key's optional DNS prefix (before `/`): 253 characters at most.
const PREFIX_MAX: usize = 253;

/// A set of requirements, all of which a pod's labels must meet.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Selector {
    requirements: Vec<Requirement>,
}

/// One requirement on one label key.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Requirement {
    pub key: String,
    pub op: Op,
}

#[derive(Clone, Debug, PartialEq, Eq)]
pub enum Op {
    /// `key=value`, `key==value`, `key in (a,b)`: the label is set to one of the values.
    In(Vec<String>),
    /// `key!=value`, `key notin (a,b)`: the label is unset or set to none of the values.
    NotIn(Vec<String>),
    /// `key`: the label is set.
    Exists,
    /// `!key`: the label is unset.
    DoesNotExist,
}

/// Why a selector did not parse. Its text starts with the selector itself, so a caller that
/// writes `pods={err}` shows the whole argument: `pods=app=: missing a value after "app="`.
#[derive(Clone, Debug, Error, PartialEq, Eq)]
#[error("{selector}: {reason}")]
pub struct SelectorError {
    pub selector: String,
    pub reason: String,
}

impl Requirement {
    pub fn matches(&self, labels: &BTreeMap<String, String>) -> bool {
        let value = labels.get(&self.key);
        match &self.op {
            Op::In(values) => value.is_some_and(|v| values.contains(v)),
            Op::NotIn(values) => value.is_none_or(|v| !values.contains(v)),
            Op::Exists => value.is_some(),
            Op::DoesNotExist => value.is_none(),
        }
    }
}

impl Selector {
    /// Whether `labels` meet every requirement.
    pub fn matches(&self, labels: &BTreeMap<String, String>) -> bool {
        self.requirements.iter().all(|r| r.matches(labels))
    }

    pub fn requirements(&self) -> &[Requirement] {
        &self.requirements
    }
}

impl fmt::Display for Requirement {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match &self.op {
            Op::In(v) if v.len() == 1 => write!(f, "{}={}", self.key, v[0]),
            Op::NotIn(v) if v.len() == 1 => write!(f, "{}!={}", self.key, v[0]),
            Op::In(v) => write!(f, "{} in ({})", self.key, v.join(",")),
            Op::NotIn(v) => write!(f, "{} notin ({})", self.key, v.join(",")),
            Op::Exists => f.write_str(&self.key),
            Op::DoesNotExist => write!(f, "!{}", self.key),
        }
    }
}

/// The canonical text, which parses back to the same selector.
impl fmt::Display for Selector {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        for (i, r) in self.requirements.iter().enumerate() {
            if i > 0 {
                f.write_str(",")?;
            }
            write!(f, "{r}")?;
        }
        Ok(())
    }
}

#[derive(Clone, Debug, PartialEq, Eq)]
enum Token<'a> {
    Word(&'a str),
    /// `=` or `==`.
    Eq,
    NotEq,
    Not,
    Comma,
    Open,
    Close,
}

impl fmt::Display for Token<'_> {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(match self {
            Token::Word(w) => w,
            Token::Eq => "=",
            Token::NotEq => "!=",
            Token::Not => "!",
            Token::Comma => ",",
            Token::Open => "(",
            Token::Close => ")",
        })
    }
}

fn tokens(text: &str) -> Vec<Token<'_>> {
    let mut out = Vec::new();
    let mut rest = text;
    while let Some(c) = rest.chars().next() {
        let (token, len) = match c {
            c if c.is_whitespace() => (None, c.len_utf8()),
            ',' => (Some(Token::Comma), 1),
            '(' => (Some(Token::Open), 1),
            ')' => (Some(Token::Close), 1),
            '=' if rest.starts_with("==") => (Some(Token::Eq), 2),
            '=' => (Some(Token::Eq), 1),
            '!' if rest.starts_with("!=") => (Some(Token::NotEq), 2),
            '!' => (Some(Token::Not), 1),
            _ => {
                let len = rest
                    .find(|c: char| c.is_whitespace() || ",()=!".contains(c))
                    .unwrap_or(rest.len());
                (Some(Token::Word(&rest[..len])), len)
            }
        };
        out.extend(token);
        rest = &rest[len..];
    }
    out
}

struct Parser<'a> {
    tokens: Vec<Token<'a>>,
    at: usize,
}

impl<'a> Parser<'a> {
    fn peek(&self) -> Option<&Token<'a>> {
        self.tokens.get(self.at)
    }

    fn next(&mut self) -> Option<Token<'a>> {
        let t = self.tokens.get(self.at).cloned();
        self.at += usize::from(t.is_some());
        t
    }

    fn requirement(&mut self) -> Result<Requirement, String> {
        let negated = self.peek() == Some(&Token::Not);
        if negated {
            self.next();
        }
        let key = match self.next() {
            Some(Token::Word(w)) => key(w)?,
            Some(t) if negated => {
                return Err(format!("expected a label key after \"!\", found \"{t}\""));
            }
            Some(t) => return Err(format!("expected a label key, found \"{t}\"")),
            None if negated => return Err("expected a label key after \"!\"".to_owned()),
            None => return Err("expected a label key after \",\"".to_owned()),
        };
        if negated {
            return match self.peek() {
                None | Some(Token::Comma) => Ok(Requirement {
                    key,
                    op: Op::DoesNotExist,
                }),
                Some(t) => Err(format!(
                    "\"!{key}\" takes no operator or value (found \"{t}\"); write {key}!=VALUE to exclude a value"
                )),
            };
        }
        let op = match self.peek().cloned() {
            None | Some(Token::Comma) => {
                return Ok(Requirement {
                    key,
                    op: Op::Exists,
                });
            }
            Some(op @ (Token::Eq | Token::NotEq)) => {
                self.next();
                let sign = op.to_string();
                let value = match self.next() {
                    Some(Token::Word(w)) => value(w)?,
                    None | Some(Token::Comma) => {
                        return Err(format!("missing a value after \"{key}{sign}\""));
                    }
                    Some(t) => {
                        return Err(format!(
                            "expected a value after \"{key}{sign}\", found \"{t}\""
                        ));
                    }
                };
                if op == Token::Eq {
                    Op::In(vec![value])
                } else {
                    Op::NotIn(vec![value])
                }
            }
            Some(Token::Word(word @ ("in" | "notin"))) => {
                self.next();
                let values = self.values(&key, word)?;
                if word == "in" {
                    Op::In(values)
                } else {
                    Op::NotIn(values)
                }
            }
            Some(t) => {
                return Err(format!(
                    "expected =, ==, !=, in or notin after \"{key}\" (or \",\" before the next requirement), found \"{t}\""
                ));
            }
        };
        Ok(Requirement { key, op })
    }

    /// `(a,b,...)` after `key in` or `key notin`.
    fn values(&mut self, key: &str, word: &str) -> Result<Vec<String>, String> {
        if self.next() != Some(Token::Open) {
            return Err(format!("expected \"(\" after \"{key} {word}\""));
        }
        let mut values = Vec::new();
        loop {
            match self.next() {
                Some(Token::Word(w)) => values.push(value(w)?),
                Some(Token::Close) if values.is_empty() => {
                    return Err(format!("\"{key} {word} ()\" needs at least one value"));
                }
                Some(t) => {
                    return Err(format!(
                        "expected a value in \"{key} {word} (...)\", found \"{t}\""
                    ));
                }
                None => return Err(format!("missing \")\" after \"{key} {word} (\"")),
            }
            match self.next() {
                Some(Token::Comma) => {}
                Some(Token::Close) => return Ok(values),
                Some(t) => {
                    return Err(format!(
                        "expected \",\" or \")\" in \"{key} {word} (...)\", found \"{t}\""
                    ));
                }
                None => return Err(format!("missing \")\" after \"{key} {word} (\"")),
            }
        }
    }
}

/// A label name (and a value, when not empty): alphanumerics, `-`, `_`, `.`, starting and
/// ending alphanumeric, 63 characters at most.
fn is_name(s: &str) -> bool {
    let alnum = |c: Option<char>| c.is_some_and(|c| c.is_ascii_alphanumeric());
    s.len() <= NAME_MAX
        && alnum(s.chars().next())
        && alnum(s.chars().last())
        && s.chars()
            .all(|c| c.is_ascii_alphanumeric() || "-_.".contains(c))
}

/// A DNS subdomain: lower-case alphanumerics, `-` and `.`, starting and ending alphanumeric.
fn is_dns_subdomain(s: &str) -> bool {
    let alnum = |c: Option<char>| c.is_some_and(|c| c.is_ascii_lowercase() || c.is_ascii_digit());
    s.len() <= PREFIX_MAX
        && alnum(s.chars().next())
        && alnum(s.chars().last())
        && s.chars()
            .all(|c| c.is_ascii_lowercase() || c.is_ascii_digit() || "-.".contains(c))
}

fn key(word: &str) -> Result<String, String> {
    let valid = match word.split_once('/') {
        Some((prefix, name)) => is_dns_subdomain(prefix) && is_name(name),
        None => is_name(word),
    };
    if valid {
        Ok(word.to_owned())
    } else {
        Err(format!(
            "bad label key \"{word}\": a key is a name of up to {NAME_MAX} letters, digits, '-', '_' \
             or '.' that starts and ends with a letter or digit, optionally after a DNS prefix and \
             '/' (example.com/app)"
        ))
    }
}

fn value(word: &str) -> Result<String, String> {
    if is_name(word) {
        Ok(word.to_owned())
    } else {
        Err(format!(
            "bad label value \"{word}\": a value is up to {NAME_MAX} letters, digits, '-', '_' or \
             '.' that starts and ends with a letter or digit"
        ))
    }
}

impl FromStr for Selector {
    type Err = SelectorError;

    fn from_str(text: &str) -> Result<Self, Self::Err> {
        let error = |reason: String| SelectorError {
            selector: text.to_owned(),
            reason,
        };
        let mut parser = Parser {
            tokens: tokens(text),
            at: 0,
        };
        if parser.peek().is_none() {
            return Err(error(
                "empty selector: name at least one label requirement, e.g. app=cart".to_owned(),
            ));
        }
        let mut requirements = vec![parser.requirement().map_err(error)?];
        while let Some(t) = parser.next() {
            if t != Token::Comma {
                return Err(error(format!(
                    "expected \",\" between requirements, found \"{t}\""
                )));
            }
            requirements.push(parser.requirement().map_err(error)?);
        }
        Ok(Self { requirements })
    }
}

/// Whether `text` matches `pattern`, where `*` stands for any run of characters (none
/// included) and `?` for exactly one; every other character stands for itself.
pub fn glob_match(pattern: &str, text: &str) -> bool {
    let (p, t): (Vec<char>, Vec<char>) = (pattern.chars().collect(), text.chars().collect());
    let (mut pi, mut ti) = (0, 0);
    // The last `*` seen and the text position it was tried at: on a mismatch, let it swallow
    // one more character. Linear backtracking suffices since a later `*` subsumes earlier ones.
    let mut star: Option<(usize, usize)> = None;
    while ti < t.len() {
        if pi < p.len() && (p[pi] == '?' || (p[pi] != '*' && p[pi] == t[ti])) {
            pi += 1;
            ti += 1;
        } else if pi < p.len() && p[pi] == '*' {
            star = Some((pi, ti));
            pi += 1;
        } else if let Some((sp, st)) = star {
            pi = sp + 1;
            ti = st + 1;
            star = Some((sp, st + 1));
        } else {
            return false;
        }
    }
    p[pi..].iter().all(|&c| c == '*')
}

#[cfg(test)]
mod tests {
    use super::*;

    fn labels(pairs: &[(&str, &str)]) -> BTreeMap<String, String> {
        pairs
            .iter()
            .map(|(k, v)| ((*k).to_owned(), (*v).to_owned()))
            .collect()
    }

    fn sel(text: &str) -> Selector {
        text.parse()
            .unwrap_or_else(|e| panic!("{text:?} should parse: {e}"))
    }

    fn err(text: &str) -> String {
        match text.parse::<Selector>() {
            Ok(s) => panic!("{text:?} should not parse, got {s:?}"),
            Err(e) => e.to_string(),
        }
    }

    #[test]
    fn parses_every_form() {
        let s = sel("app=cart, tier!=canary,env in (a, b),zone notin(c),team,!legacy,x==y");
        let r = s.requirements();
        assert_eq!(r.len(), 7);
        assert_eq!(r[0].op, Op::In(vec!["cart".into()]));
        assert_eq!(r[1].op, Op::NotIn(vec!["canary".into()]));
        assert_eq!(r[2].op, Op::In(vec!["a".into(), "b".into()]));
        assert_eq!(r[3].op, Op::NotIn(vec!["c".into()]));
        assert_eq!(r[4].op, Op::Exists);
        assert_eq!((r[5].key.as_str(), &r[5].op), ("legacy", &Op::DoesNotExist));
        assert_eq!(r[6].op, Op::In(vec!["y".into()]));
        assert_eq!(
            s.to_string(),
            "app=cart,tier!=canary,env in (a,b),zone!=c,team,!legacy,x=y"
        );
        assert_eq!(sel(&s.to_string()), s);
        assert_eq!(
            sel("example.com/app-name=v1.2_3").requirements()[0].key,
            "example.com/app-name"
        );
    }

    #[test]
    fn matches_like_kubernetes() {
        let cart = labels(&[("app", "cart"), ("tier", "web"), ("env", "a")]);
        let canary = labels(&[("app", "cart"), ("tier", "canary")]);
        let s = sel("app=cart,tier!=canary");
        assert!(s.matches(&cart));
        assert!(!s.matches(&canary));
        // `!=` and `notin` also match pods without the label at all.
        assert!(sel("tier!=canary").matches(&labels(&[])));
        assert!(sel("env notin (b,c)").matches(&canary));
        assert!(!sel("env notin (a)").matches(&cart));
        assert!(sel("env in (b,a)").matches(&cart));
        assert!(!sel("env in (b,a)").matches(&canary));
        assert!(sel("env").matches(&cart) && !sel("env").matches(&canary));
        assert!(!sel("!env").matches(&cart) && sel("!env").matches(&canary));
        assert!(sel("app==cart,env").matches(&cart));
    }

    #[test]
    fn error_texts() {
        let cases = [
            (
                "",
                ": empty selector: name at least one label requirement, e.g. app=cart",
            ),
            (
                "  ",
                "  : empty selector: name at least one label requirement, e.g. app=cart",
            ),
            ("app=", "app=: missing a value after \"app=\""),
            ("app=,b=c", "app=,b=c: missing a value after \"app=\""),
            ("app!=", "app!=: missing a value after \"app!=\""),
            ("=cart", "=cart: expected a label key, found \"=\""),
            ("app=cart,", "app=cart,: expected a label key after \",\""),
            (
                "app cart",
                "app cart: expected =, ==, !=, in or notin after \"app\" (or \",\" before the next requirement), found \"cart\"",
            ),
            (
                "app=a=b",
                "app=a=b: expected \",\" between requirements, found \"=\"",
            ),
            ("env in a,b", "env in a,b: expected \"(\" after \"env in\""),
            (
                "env in ()",
                "env in (): \"env in ()\" needs at least one value",
            ),
            (
                "env notin (a,b",
                "env notin (a,b: missing \")\" after \"env notin (\"",
            ),
            (
                "env in (a b)",
                "env in (a b): expected \",\" or \")\" in \"env in (...)\", found \"b\"",
            ),
            (
                "env in (a,,b)",
                "env in (a,,b): expected a value in \"env in (...)\", found \",\"",
            ),
            ("!", "!: expected a label key after \"!\""),
            (
                "!app=x",
                "!app=x: \"!app\" takes no operator or value (found \"=\"); write app!=VALUE to exclude a value",
            ),
            (
                "app=a=",
                "app=a=: expected \",\" between requirements, found \"=\"",
            ),
            (
                "-app=x",
                "-app=x: bad label key \"-app\": a key is a name of up to 63 letters, digits, '-', '_' or '.' that starts and ends with a letter or digit, optionally after a DNS prefix and '/' (example.com/app)",
            ),
            (
                "Example.com/app",
                "Example.com/app: bad label key \"Example.com/app\": a key is a name of up to 63 letters, digits, '-', '_' or '.' that starts and ends with a letter or digit, optionally after a DNS prefix and '/' (example.com/app)",
            ),
            (
                "app=c*t",
                "app=c*t: bad label value \"c*t\": a value is up to 63 letters, digits, '-', '_' or '.' that starts and ends with a letter or digit",
            ),
        ];
        for (text, want) in cases {
            assert_eq!(err(text), want, "for {text:?}");
        }
        let long = "a".repeat(64);
        assert!(err(&format!("app={long}")).contains("bad label value"));
        assert_eq!(
            format!("pods={}", err("app=")),
            "pods=app=: missing a value after \"app=\""
        );
    }

    #[test]
    fn globs() {
        for (pattern, text, want) in [
            ("*", "", true),
            ("*", "anything", true),
            ("", "", true),
            ("", "x", false),
            ("cart-*", "cart-7f9c", true),
            ("cart-*", "cart", false),
            ("*-canary", "cart-canary", true),
            ("c?rt", "cart", true),
            ("c?rt", "crt", false),
            ("a*b*c", "aXbYbZc", true),
            ("a*b*c", "aXbYbZ", false),
            ("*a*a*a*b", "aaaaaaaaaaaaaaaaaaaaaaaaaaaaaa", false),
            ("**x", "yx", true),
            ("é?", "éü", true),
            ("web", "web", true),
            ("web", "webs", false),
        ] {
            assert_eq!(glob_match(pattern, text), want, "{pattern:?} vs {text:?}");
        }
    }
}
