//! The incident journal: every significant event and one traffic sample a second, durably in
//! SQLite (WAL); incidents opened and closed from the alerts; postmortem drafts and charts.

pub mod analysis;
pub mod chart;
pub mod postmortem;
pub mod report;
pub mod store;
pub mod writer;

pub use store::JournalError;
pub use writer::Journal;

use std::path::Path;

/// Output format of a postmortem.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Format {
    Markdown,
    Json,
}

/// The postmortem of an incident (`None`: the latest) read from a journal file.
pub fn postmortem(path: &Path, id: Option<i64>, format: Format) -> Result<String, JournalError> {
    let c = store::open_read(path)?;
    let inc = report::pick(&c, id)?;
    let r = report::build(&c, &inc).map_err(store::err(path))?;
    Ok(match format {
        Format::Markdown => postmortem::markdown(&r),
        Format::Json => serde_json::to_string_pretty(&r).unwrap_or_default(),
    })
}
