//! One result row per scenario and the closing goals table.

/// What one scenario measured against its goal.
#[derive(Debug, Clone)]
pub struct Row {
    pub what: String,
    pub goal: String,
    /// The measured figures, as printed; "-" when the scenario could not run.
    pub measured: String,
    pub pass: bool,
    /// Why it failed, when the figures alone do not say (a missing gateway feature, an
    /// error that stopped the scenario).
    pub note: Option<String>,
}

impl Row {
    pub fn new(what: &str, goal: &str) -> Self {
        Self {
            what: what.to_owned(),
            goal: goal.to_owned(),
            measured: "-".to_owned(),
            pass: false,
            note: None,
        }
    }

    pub fn verdict(&self) -> &'static str {
        if self.pass { "PASS" } else { "FAIL" }
    }

    /// The line printed as soon as the scenario ends.
    pub fn line(&self) -> String {
        let mut line = format!("{}: {} [{}]", self.what, self.measured, self.verdict());
        if let Some(note) = &self.note {
            line += &format!(" ({note})");
        }
        line
    }
}

/// The Markdown table of every row.
pub fn table(rows: &[Row]) -> String {
    let mut out = String::from("| what | goal | measured | verdict |\n|---|---|---|---|\n");
    for r in rows {
        let measured = match &r.note {
            Some(note) if !r.pass => format!("{} — {note}", r.measured),
            _ => r.measured.clone(),
        };
        out += &format!(
            "| {} | {} | {} | {} |\n",
            r.what,
            r.goal,
            measured,
            r.verdict()
        );
    }
    out
}

/// A share as a percentage with one decimal.
pub fn pct(share: f64) -> String {
    format!("{:.1}%", share * 100.0)
}
