//! A line diff for plans: the lines removed (`-`) and added (`+`) between two texts, found
//! with a longest common subsequence. Large files are summarised instead.

/// Largest product of line counts diffed line by line.
pub const MAX_DIFF_CELLS: usize = 4_000_000;

/// The `-`/`+` lines turning `before` into `after`, in order; unchanged lines are left out.
pub fn changed_lines(before: &str, after: &str) -> Vec<String> {
    let old: Vec<&str> = before.lines().collect();
    let new: Vec<&str> = after.lines().collect();
    if old.len().saturating_mul(new.len()) > MAX_DIFF_CELLS {
        return vec![format!(
            "~ {} lines replaced by {} lines",
            old.len(),
            new.len()
        )];
    }
    let table = lcs_table(&old, &new);
    let (mut i, mut j) = (0, 0);
    let mut lines = Vec::new();
    while i < old.len() || j < new.len() {
        if i < old.len() && j < new.len() && old[i] == new[j] {
            i += 1;
            j += 1;
        } else if i < old.len() && (j == new.len() || table[i + 1][j] >= table[i][j + 1]) {
            lines.push(format!("- {}", old[i]));
            i += 1;
        } else {
            lines.push(format!("+ {}", new[j]));
            j += 1;
        }
    }
    lines
}

/// `table[i][j]`: length of the longest common subsequence of `old[i..]` and `new[j..]`.
fn lcs_table(old: &[&str], new: &[&str]) -> Vec<Vec<u32>> {
    let mut table = vec![vec![0u32; new.len() + 1]; old.len() + 1];
    for i in (0..old.len()).rev() {
        for j in (0..new.len()).rev() {
            table[i][j] = if old[i] == new[j] {
                table[i + 1][j + 1] + 1
            } else {
                table[i + 1][j].max(table[i][j + 1])
            };
        }
    }
    table
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn only_changed_lines_are_listed_in_order() {
        let lines = changed_lines("a\nb\nc\n", "a\nB\nc\nd\n");
        assert_eq!(lines, ["- b", "+ B", "+ d"]);
        assert!(changed_lines("same\n", "same\n").is_empty());
        assert_eq!(changed_lines("", "x\n"), ["+ x"]);
    }
}
