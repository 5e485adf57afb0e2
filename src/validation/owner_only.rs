//! Files only this user may change: the worker token file, the identity key file and the audit
//! log.
//!
//! A worker trusts what it reads from its token file and vouches for what it appends to its
//! audit log, so neither may be a file that someone else can swap or rewrite. [`open`] opens the
//! file once, without following a symlink (`O_NOFOLLOW`: a link an attacker can re-point is
//! refused, not followed) and without blocking on a FIFO (`O_NONBLOCK`), then checks that very
//! handle (`fstat`): a regular file, owned by the effective user, without the permission bits
//! the [`Rule`] forbids. Everything later goes through the same handle, so the file cannot be
//! exchanged between the check and its use. The refusals read the same for every such file
//! ("… is readable by group or others (mode 0644); run chmod 600 on it", "… is owned by uid N,
//! not by this user (uid M)").

use std::fs::{File, Metadata, OpenOptions};
use std::path::Path;

use super::shown_path;

/// What a guarded file is called and which permission bits refuse it.
#[derive(Debug, Clone, Copy)]
pub struct Rule {
    /// The file's name in messages ("token file", "audit log").
    pub what: &'static str,
    /// Permission bits that must all be clear (e.g. `0o077`: nothing for group or others).
    pub forbidden_mode: u32,
    /// What those bits allow, in words ("readable by group or others").
    pub forbidden_words: &'static str,
    /// The verb of the message when the file cannot be opened ("read", "open").
    pub open_verb: &'static str,
}

/// The worker token: a secret, so group and others may do nothing with it.
pub const TOKEN_FILE: Rule = Rule {
    what: "token file",
    forbidden_mode: 0o077,
    forbidden_words: "readable by group or others",
    open_verb: "read",
};

/// The worker's identity key (PKCS#8 PEM): a secret, kept like the token.
pub const IDENTITY_KEY_FILE: Rule = Rule {
    what: "identity key file",
    ..TOKEN_FILE
};

/// The audit log: evidence, so group and others must not be able to write it.
pub const AUDIT_LOG: Rule = Rule {
    what: "audit log",
    forbidden_mode: 0o022,
    forbidden_words: "writable by group or others",
    open_verb: "open",
};

/// Opens `path` with `options` (the caller says read, append, create and a creation mode) under
/// `rule`; returns the handle and its metadata, or the refusal in words (the path sanitised,
/// never the file's contents).
pub fn open(
    path: &Path,
    rule: &Rule,
    options: &mut OpenOptions,
) -> Result<(File, Metadata), String> {
    let shown = shown_path(path);
    let what = rule.what;
    let verb = rule.open_verb;
    let file =
        open_nofollow(path, options).map_err(|e| format!("cannot {verb} {what} {shown}: {e}"))?;
    let meta = file
        .metadata()
        .map_err(|e| format!("cannot read {what} {shown}: {e}"))?;
    if !meta.is_file() {
        return Err(format!("{what} {shown} is not a regular file"));
    }
    check_owner_only(&meta, rule, &shown)?;
    Ok((file, meta))
}

#[cfg(unix)]
fn check_owner_only(meta: &Metadata, rule: &Rule, shown: &str) -> Result<(), String> {
    use std::os::unix::fs::MetadataExt;
    let what = rule.what;
    let mode = meta.mode() & 0o777;
    if mode & rule.forbidden_mode != 0 {
        return Err(format!(
            "{what} {shown} is {} (mode {mode:04o}); run chmod 600 on it",
            rule.forbidden_words
        ));
    }
    let me = rustix::process::geteuid().as_raw();
    if meta.uid() != me {
        return Err(format!(
            "{what} {shown} is owned by uid {}, not by this user (uid {me})",
            meta.uid()
        ));
    }
    Ok(())
}

#[cfg(not(unix))]
fn check_owner_only(_meta: &Metadata, _rule: &Rule, _shown: &str) -> Result<(), String> {
    Ok(())
}

/// Opens without following a final symlink and without blocking (a FIFO would otherwise wait
/// for a peer).
fn open_nofollow(path: &Path, options: &mut OpenOptions) -> std::io::Result<File> {
    #[cfg(unix)]
    {
        use std::os::unix::fs::OpenOptionsExt;
        let flags = rustix::fs::OFlags::NOFOLLOW | rustix::fs::OFlags::NONBLOCK;
        let flags = i32::try_from(flags.bits()).map_err(|_| {
            std::io::Error::new(std::io::ErrorKind::Unsupported, "open flags out of range")
        })?;
        options.custom_flags(flags);
    }
    let opened = options.open(path);
    // O_NOFOLLOW on a symlink fails with ELOOP: say what it means.
    #[cfg(unix)]
    let opened = opened.map_err(|e| {
        if e.raw_os_error() == Some(rustix::io::Errno::LOOP.raw_os_error()) {
            std::io::Error::new(
                std::io::ErrorKind::InvalidInput,
                "it is a symbolic link (refused: give the file itself)",
            )
        } else {
            e
        }
    });
    opened
}
