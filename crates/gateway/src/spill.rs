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
//! sharing the directory do not both send it) and reads it into the entries it retries. The
//! claimed file is deleted only once Redis has taken them all ([`Spill::release`]), so a
//! process that dies between the two loses nothing: a claim older than [`STALE_CLAIM`] is
//! taken as abandoned and claimed again by anyone. Sending an entry twice is harmless: the
//! ingester upserts events by their id.

use std::fs;
use std::io::{self, BufRead, Write};
use std::path::{Path, PathBuf};
use std::time::{Duration, SystemTime, UNIX_EPOCH};

/// A spill file's name: `audit-<uuid v7>.jsonl` (time-ordered, so the oldest sorts first).
const PREFIX: &str = "audit-";
const SUFFIX: &str = ".jsonl";
/// A claimed file's name: `.<spill file name>.<uuid v7 of the claim>.claimed`.
const CLAIMED: &str = ".claimed";

/// How old a claim must be to be taken as abandoned (its claimant died before Redis took the
/// entries). A live claimant holds one only while Redis takes the file's entries, unless
/// Redis fails again meanwhile; a claim taken over from a live claimant sends its entries
/// twice, which is harmless.
pub const STALE_CLAIM: Duration = Duration::from_secs(600);

/// A spill file claimed by [`Spill::take_oldest`]: its entries, oldest first, how many of its
/// lines were not JSON (given up), and the claimed file, to [`Spill::release`] once Redis has
/// taken the entries.
#[derive(Debug, PartialEq, Eq)]
pub struct Taken {
    pub entries: Vec<String>,
    pub invalid: usize,
    pub claim: PathBuf,
}

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

    /// Claims the oldest spill file (or abandoned claim) and reads it; `None` when there is
    /// none to claim. The file stays until [`Spill::release`].
    pub fn take_oldest(&self) -> io::Result<Option<Taken>> {
        loop {
            let Some((current, original)) = self.oldest()? else {
                return Ok(None);
            };
            let claim = self.dir.join(format!(
                ".{original}.{}{CLAIMED}",
                uuid::Uuid::now_v7().simple()
            ));
            match fs::rename(self.dir.join(&current), &claim) {
                Ok(()) => {}
                // Another worker claimed it first.
                Err(e) if e.kind() == io::ErrorKind::NotFound => continue,
                Err(e) => return Err(e),
            }
            let mut entries = Vec::new();
            let mut invalid = 0;
            for line in io::BufReader::new(fs::File::open(&claim)?).lines() {
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
            return Ok(Some(Taken {
                entries,
                invalid,
                claim,
            }));
        }
    }

    /// Deletes a claimed file whose entries Redis has taken.
    pub fn release(&self, claim: &Path) -> io::Result<()> {
        match fs::remove_file(claim) {
            Err(e) if e.kind() != io::ErrorKind::NotFound => Err(e),
            _ => Ok(()),
        }
    }

    /// Whether a spill file waits to be taken.
    pub fn has_files(&self) -> bool {
        self.oldest().is_ok_and(|name| name.is_some())
    }

    /// The oldest file to claim, by the name it was spilled under: its current name, and that
    /// one. A spill file, or a claim abandoned [`STALE_CLAIM`] ago.
    fn oldest(&self) -> io::Result<Option<(String, String)>> {
        let stale = SystemTime::now()
            .checked_sub(STALE_CLAIM)
            .and_then(|t| t.duration_since(UNIX_EPOCH).ok())
            .unwrap_or_default();
        let mut oldest: Option<(String, String)> = None;
        for entry in fs::read_dir(&self.dir)? {
            let name = entry?.file_name();
            let Some(name) = name.to_str() else { continue };
            let original = if name.starts_with(PREFIX) && name.ends_with(SUFFIX) {
                name
            } else {
                match abandoned(name, stale) {
                    Some(original) => original,
                    None => continue,
                }
            };
            if oldest.as_ref().is_none_or(|(_, o)| original < o.as_str()) {
                oldest = Some((name.to_owned(), original.to_owned()));
            }
        }
        Ok(oldest)
    }
}

/// The spill file name of a claim made before `stale` (since the epoch), if `name` is one.
fn abandoned(name: &str, stale: Duration) -> Option<&str> {
    let (original, claimed) = name
        .strip_prefix('.')?
        .strip_suffix(CLAIMED)?
        .rsplit_once('.')?;
    let (seconds, nanos) = uuid::Uuid::parse_str(claimed)
        .ok()?
        .get_timestamp()?
        .to_unix();
    let at = Duration::new(seconds, nanos);
    (original.starts_with(PREFIX) && original.ends_with(SUFFIX) && at < stale).then_some(original)
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
        let first = spill.take_oldest().unwrap().unwrap();
        assert_eq!(
            (first.entries.as_slice(), first.invalid),
            (
                [r#"{"n":1}"#.to_owned(), r#"{"n":2}"#.to_owned()].as_slice(),
                0
            )
        );
        let second = other.take_oldest().unwrap().unwrap();
        assert_eq!(second.entries, [r#"{"n":3}"#.to_owned()]);
        assert_eq!(spill.take_oldest().unwrap(), None);
        assert!(!spill.has_files());
        assert_eq!(
            fs::read_dir(&path).unwrap().count(),
            2,
            "claimed files stay until released"
        );
        spill.release(&first.claim).unwrap();
        other.release(&second.claim).unwrap();
        other.release(&second.claim).unwrap();
        assert_eq!(fs::read_dir(&path).unwrap().count(), 0, "released");
        fs::remove_dir(&path).unwrap();
    }

    #[test]
    fn an_abandoned_claim_is_claimed_again() {
        let path = dir();
        let spill = Spill::open(&path).unwrap();
        spill.write(&[r#"{"n":1}"#.into()]).unwrap();
        let taken = spill.take_oldest().unwrap().unwrap();
        // A fresh claim is its claimant's.
        assert_eq!(spill.take_oldest().unwrap(), None);
        // One made before STALE_CLAIM ago was abandoned (its claimant died).
        let name = taken.claim.file_name().unwrap().to_str().unwrap();
        let original = name.strip_prefix('.').unwrap().rsplit_once('.').unwrap().0;
        let original = original.rsplit_once('.').unwrap().0;
        let then = SystemTime::now() - STALE_CLAIM - Duration::from_secs(1);
        let since = then.duration_since(UNIX_EPOCH).unwrap();
        let old = uuid::Uuid::new_v7(uuid::Timestamp::from_unix(
            uuid::NoContext,
            since.as_secs(),
            since.subsec_nanos(),
        ));
        let abandoned = path.join(format!(".{original}.{}{CLAIMED}", old.simple()));
        fs::rename(&taken.claim, &abandoned).unwrap();
        let again = spill.take_oldest().unwrap().unwrap();
        assert_eq!(again.entries, taken.entries);
        assert!(!abandoned.exists());
        spill.release(&again.claim).unwrap();
        assert_eq!(fs::read_dir(&path).unwrap().count(), 0);
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
        let taken = spill.take_oldest().unwrap().unwrap();
        assert_eq!(
            (taken.entries, taken.invalid),
            (vec![r#"{"n":1}"#.to_owned(), "[2]".to_owned()], 1)
        );
        spill.release(&taken.claim).unwrap();
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
