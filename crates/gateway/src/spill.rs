//! Audit entries Redis could not take, kept on disk until it can (`PORTCULLIS_AUDIT_SPILL_DIR`).
//!
//! A batcher keeps entries whose write failed in memory, up to a bound (see [`crate::batch`]).
//! With a spill directory, what would be given up goes to a file instead: the oldest entries
//! once that bound is passed during a long outage, and everything still held when the worker
//! stops before Redis is back. Each spill is one new file of JSON lines (one encoded stream
//! entry per line), written under a temporary name, flushed to disk and renamed, so a file
//! that has its final name is whole.
//!
//! Any batcher using the directory takes the files back while Redis answers: it claims one
//! by renaming it (a rename succeeds for one claimant only, so two workers or two processes
//! sharing the directory do not both send it), reads it into the entries it retries, and
//! deletes it. From then on the entries are the batcher's like any entry kept for a retry.
//! Sending an entry twice is harmless: the ingester upserts events by their id.

use std::fs;
use std::io::{self, BufRead, Write};
use std::path::{Path, PathBuf};

/// A spill file's name: `audit-<uuid v7>.jsonl` (time-ordered, so the oldest sorts first).
const PREFIX: &str = "audit-";
const SUFFIX: &str = ".jsonl";

/// The spill directory.
#[derive(Debug, Clone)]
pub struct Spill {
    dir: PathBuf,
}

impl Spill {
    /// Uses `dir`, creating it (readable by this user only) if missing.
    pub fn open(dir: impl Into<PathBuf>) -> io::Result<Self> {
        let dir = dir.into();
        let mut builder = fs::DirBuilder::new();
        builder.recursive(true);
        #[cfg(unix)]
        std::os::unix::fs::DirBuilderExt::mode(&mut builder, 0o700);
        builder.create(&dir)?;
        Ok(Self { dir })
    }

    /// The directory.
    pub fn dir(&self) -> &Path {
        &self.dir
    }

    /// Writes `entries` to a new file; they are on disk when this returns `Ok`.
    pub fn write(&self, entries: &[String]) -> io::Result<()> {
        let name = format!("{PREFIX}{}{SUFFIX}", uuid::Uuid::now_v7().simple());
        let partial = self.dir.join(format!(".{name}.partial"));
        let mut options = fs::OpenOptions::new();
        options.write(true).create_new(true);
        #[cfg(unix)]
        std::os::unix::fs::OpenOptionsExt::mode(&mut options, 0o600);
        let written = (|| {
            let mut out = io::BufWriter::new(options.open(&partial)?);
            for json in entries {
                // Encoded entries are compact JSON: a line break can only be inside a string,
                // where JSON escapes it.
                debug_assert!(!json.contains('\n'));
                out.write_all(json.as_bytes())?;
                out.write_all(b"\n")?;
            }
            out.into_inner()
                .map_err(io::IntoInnerError::into_error)?
                .sync_all()?;
            fs::rename(&partial, self.dir.join(&name))?;
            fs::File::open(&self.dir)?.sync_all()
        })();
        if written.is_err() {
            let _ = fs::remove_file(&partial);
        }
        written
    }

    /// Claims the oldest spill file and reads it: its entries, oldest first, and how many of
    /// its lines were not JSON (given up). `None` when there is none to claim.
    pub fn take_oldest(&self) -> io::Result<Option<(Vec<String>, usize)>> {
        loop {
            let Some(oldest) = self.oldest()? else {
                return Ok(None);
            };
            let claimed = self.dir.join(format!(
                ".{}.{}.claimed",
                oldest,
                uuid::Uuid::now_v7().simple()
            ));
            match fs::rename(self.dir.join(&oldest), &claimed) {
                Ok(()) => {}
                // Another worker claimed it first.
                Err(e) if e.kind() == io::ErrorKind::NotFound => continue,
                Err(e) => return Err(e),
            }
            let mut entries = Vec::new();
            let mut invalid = 0;
            for line in io::BufReader::new(fs::File::open(&claimed)?).lines() {
                let line = line?;
                if line.is_empty() {
                    continue;
                }
                if serde_json::from_str::<serde::de::IgnoredAny>(&line).is_ok() {
                    entries.push(line);
                } else {
                    invalid += 1;
                }
            }
            fs::remove_file(&claimed)?;
            return Ok(Some((entries, invalid)));
        }
    }

    /// Whether a spill file waits to be taken.
    pub fn has_files(&self) -> bool {
        self.oldest().is_ok_and(|name| name.is_some())
    }

    fn oldest(&self) -> io::Result<Option<String>> {
        let mut oldest: Option<String> = None;
        for entry in fs::read_dir(&self.dir)? {
            let name = entry?.file_name();
            let Some(name) = name.to_str() else { continue };
            if name.starts_with(PREFIX)
                && name.ends_with(SUFFIX)
                && oldest.as_deref().is_none_or(|o| name < o)
            {
                oldest = Some(name.to_owned());
            }
        }
        Ok(oldest)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn dir() -> PathBuf {
        std::env::temp_dir().join(format!(
            "portcullis-spill-{}",
            uuid::Uuid::now_v7().simple()
        ))
    }

    #[test]
    fn files_come_back_oldest_first_once_each() {
        let path = dir();
        let spill = Spill::open(&path).unwrap();
        assert!(!spill.has_files());
        spill
            .write(&[r#"{"n":1}"#.into(), r#"{"n":2}"#.into()])
            .unwrap();
        spill.write(&[r#"{"n":3}"#.into()]).unwrap();
        assert!(spill.has_files());
        let other = Spill::open(&path).unwrap();
        assert_eq!(
            spill.take_oldest().unwrap(),
            Some((vec![r#"{"n":1}"#.to_owned(), r#"{"n":2}"#.to_owned()], 0))
        );
        assert_eq!(
            other.take_oldest().unwrap(),
            Some((vec![r#"{"n":3}"#.to_owned()], 0))
        );
        assert_eq!(spill.take_oldest().unwrap(), None);
        assert_eq!(
            fs::read_dir(&path).unwrap().count(),
            0,
            "claimed files deleted"
        );
        fs::remove_dir(&path).unwrap();
    }

    #[test]
    fn lines_that_are_not_json_are_counted_and_skipped() {
        let path = dir();
        let spill = Spill::open(&path).unwrap();
        fs::write(
            path.join(format!("{PREFIX}0{SUFFIX}")),
            "{\"n\":1}\n{\"n\":\n\n[2]\n",
        )
        .unwrap();
        assert_eq!(
            spill.take_oldest().unwrap(),
            Some((vec![r#"{"n":1}"#.to_owned(), "[2]".to_owned()], 1))
        );
        fs::remove_dir(&path).unwrap();
    }

    #[cfg(unix)]
    #[test]
    fn files_are_readable_by_their_owner_only() {
        use std::os::unix::fs::PermissionsExt;
        let path = dir();
        let spill = Spill::open(&path).unwrap();
        spill.write(&[r#"{"n":1}"#.into()]).unwrap();
        let file = fs::read_dir(&path).unwrap().next().unwrap().unwrap();
        assert_eq!(file.metadata().unwrap().permissions().mode() & 0o777, 0o600);
        assert_eq!(
            fs::metadata(&path).unwrap().permissions().mode() & 0o777,
            0o700
        );
        fs::remove_file(file.path()).unwrap();
        fs::remove_dir(&path).unwrap();
    }
}
