//! Every problem found in a profile, each with the path of the key it is about, so that a
//! profile with ten mistakes is answered with ten lines.

use std::fmt;

/// One problem: where (`kubelet.authorization.mode`) and what is wrong.
#[derive(Clone, Debug, PartialEq, Eq, serde::Serialize)]
pub struct Problem {
    /// Dotted path of the key, with quoted segments where a key holds dots
    /// (`hardening.overrides.sysctls."net.ipv4.ip_forward"`).
    pub path: String,
    /// What is wrong, lowercase, naming the rule broken.
    pub message: String,
}

/// Every problem found in a profile; never empty when returned as an error.
#[derive(Clone, Debug, Default, PartialEq, Eq, serde::Serialize)]
pub struct ProfileErrors {
    /// The problems, in the order they were found.
    pub problems: Vec<Problem>,
}

impl ProfileErrors {
    /// Records a problem at `path`.
    pub fn push(&mut self, path: impl Into<String>, message: impl Into<String>) {
        self.problems.push(Problem {
            path: path.into(),
            message: message.into(),
        });
    }

    /// Whether no problem was found.
    pub fn is_empty(&self) -> bool {
        self.problems.is_empty()
    }

    /// How many problems were found.
    pub fn len(&self) -> usize {
        self.problems.len()
    }

    /// `Ok(value)` when no problem was found, else these problems.
    pub fn into_result<T>(self, value: T) -> Result<T, ProfileErrors> {
        if self.is_empty() {
            Ok(value)
        } else {
            Err(self)
        }
    }

    /// Adds every problem of `other`.
    pub fn extend(&mut self, other: ProfileErrors) {
        self.problems.extend(other.problems);
    }

    /// Whether some problem is about `path` or a key below it.
    pub fn mentions(&self, path: &str) -> bool {
        self.problems.iter().any(|p| p.path.starts_with(path))
    }
}

impl fmt::Display for Problem {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "{}: {}", self.path, self.message)
    }
}

impl fmt::Display for ProfileErrors {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        let count = self.problems.len();
        let noun = if count == 1 { "problem" } else { "problems" };
        write!(f, "the profile has {count} {noun}:")?;
        for problem in &self.problems {
            write!(f, "\n  {problem}")?;
        }
        Ok(())
    }
}

impl std::error::Error for ProfileErrors {}

/// `parent.key`, quoting `key` when it holds characters that would make the path ambiguous.
pub fn join(parent: &str, key: &str) -> String {
    let plain = !key.is_empty()
        && key
            .chars()
            .all(|c| c.is_ascii_alphanumeric() || c == '_' || c == '-');
    let segment = if plain {
        key.to_string()
    } else {
        format!("{key:?}")
    };
    if parent.is_empty() {
        segment
    } else {
        format!("{parent}.{segment}")
    }
}

/// `parent[index]`.
pub fn index(parent: &str, at: usize) -> String {
    format!("{parent}[{at}]")
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn display_lists_every_problem_on_its_own_line() {
        let mut errors = ProfileErrors::default();
        errors.push("kubelet.staticPodPath", "forbidden");
        errors.push("apiVersion", "missing");
        let text = errors.to_string();
        assert_eq!(
            text,
            "the profile has 2 problems:\n  kubelet.staticPodPath: forbidden\n  apiVersion: missing"
        );
    }

    #[test]
    fn keys_with_dots_are_quoted_in_paths() {
        assert_eq!(join("a", "b_c"), "a.b_c");
        assert_eq!(
            join("sysctls", "net.ipv4.ip_forward"),
            "sysctls.\"net.ipv4.ip_forward\""
        );
        assert_eq!(join("", "kubelet"), "kubelet");
        assert_eq!(index("exceptions", 2), "exceptions[2]");
    }
}
