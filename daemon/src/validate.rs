//! Enqueue's checks: a job is accepted only for a file the daemon can really upload.

use std::collections::HashMap;
use std::os::unix::fs::FileTypeExt;
use std::path::Path;

use uplink_proto::wire;

use crate::engine::reader::FileIdentity;

/// A refused Enqueue: a stable code and a sentence naming the file.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Invalid {
    pub code: &'static str,
    pub message: String,
}

fn invalid(code: &'static str, message: impl Into<String>) -> Invalid {
    Invalid {
        code,
        message: message.into(),
    }
}

/// The accepted file: its identity (for change detection) and object name.
#[derive(Debug, Clone)]
pub struct Accepted {
    pub identity: FileIdentity,
    pub target: String,
}

const MAX_METADATA_ENTRIES: usize = 64;
/// Longest path taken: Linux's PATH_MAX (macOS's is 1024, and its kernel says so itself).
const MAX_PATH: usize = 4096;
const MAX_METADATA_KEY: usize = 128;
const MAX_METADATA_VALUE: usize = 1024;

/// Blocking (stat + open): call off the reactor.
/// `growing`: the file is still being written, and may be empty yet.
pub fn check(
    path: &str,
    target: &str,
    metadata: &HashMap<String, String>,
    growing: bool,
) -> Result<Accepted, Invalid> {
    if path.is_empty() {
        return Err(invalid("path_required", "no file path given"));
    }
    if path.contains('\0') {
        return Err(invalid("bad_path", "the path contains a NUL byte"));
    }
    if path.len() > MAX_PATH {
        return Err(invalid(
            "bad_path",
            format!(
                "the path is {} bytes; paths are at most {MAX_PATH}",
                path.len()
            ),
        ));
    }
    let p = Path::new(path);
    if !p.is_absolute() {
        return Err(invalid(
            "path_not_absolute",
            format!("{path}: the path must be absolute"),
        ));
    }
    let meta = std::fs::metadata(p).map_err(|e| match e.kind() {
        std::io::ErrorKind::NotFound => invalid("file_not_found", format!("{path}: no such file")),
        std::io::ErrorKind::PermissionDenied => {
            invalid("permission_denied", format!("{path}: permission denied"))
        }
        _ => invalid("unreadable", format!("{path}: {e}")),
    })?;
    let ft = meta.file_type();
    if ft.is_dir() {
        return Err(invalid(
            "is_a_directory",
            format!("{path} is a directory, not a file"),
        ));
    }
    if !ft.is_file() {
        let kind = if ft.is_fifo() {
            "a FIFO"
        } else if ft.is_block_device() || ft.is_char_device() {
            "a device"
        } else if ft.is_socket() {
            "a socket"
        } else {
            "not a regular file"
        };
        return Err(invalid(
            "not_a_regular_file",
            format!("{path} is {kind}; only regular files can be uploaded"),
        ));
    }
    // Opening proves readability (a regular file: open does not block).
    std::fs::File::open(p).map_err(|e| match e.kind() {
        std::io::ErrorKind::PermissionDenied => {
            invalid("permission_denied", format!("{path}: permission denied"))
        }
        _ => invalid("unreadable", format!("{path}: {e}")),
    })?;
    if meta.len() == 0 && !growing {
        return Err(invalid("file_empty", format!("{path} is empty")));
    }
    if meta.len() > wire::MAX_FILE_SIZE {
        return Err(invalid(
            "file_too_large",
            format!(
                "{path} has {} bytes; the limit is {} bytes (100 GB)",
                meta.len(),
                wire::MAX_FILE_SIZE
            ),
        ));
    }
    let target = if target.is_empty() {
        wire::sanitize_object_name(
            &p.file_name()
                .map(|n| n.to_string_lossy().into_owned())
                .unwrap_or_default(),
        )
    } else if wire::is_valid_object_name(target) {
        target.to_string()
    } else {
        return Err(invalid(
            "bad_target",
            format!(
                "target {target:?} must be 1-255 characters of A-Z a-z 0-9 . _ - and not start with a dot"
            ),
        ));
    };
    if metadata.len() > MAX_METADATA_ENTRIES
        || metadata.iter().any(|(k, v)| {
            k.is_empty() || k.len() > MAX_METADATA_KEY || v.len() > MAX_METADATA_VALUE
        })
    {
        return Err(invalid(
            "bad_metadata",
            format!(
                "metadata: at most {MAX_METADATA_ENTRIES} entries, keys 1-{MAX_METADATA_KEY} bytes, values up to {MAX_METADATA_VALUE} bytes"
            ),
        ));
    }
    Ok(Accepted {
        identity: FileIdentity::of(&meta),
        target,
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    fn code(path: &str) -> &'static str {
        check(path, "", &HashMap::new(), false).unwrap_err().code
    }

    #[test]
    fn each_bad_input_has_its_code() {
        let dir = tempfile::tempdir().unwrap();
        let d = dir.path();
        std::fs::write(d.join("empty"), b"").unwrap();
        std::fs::write(d.join("ok.bin"), b"data").unwrap();
        assert_eq!(code(""), "path_required");
        assert_eq!(code("relative/file"), "path_not_absolute");
        assert_eq!(code(d.join("missing").to_str().unwrap()), "file_not_found");
        assert_eq!(code(d.to_str().unwrap()), "is_a_directory");
        assert_eq!(code("/dev/null"), "not_a_regular_file");
        assert_eq!(code(d.join("empty").to_str().unwrap()), "file_empty");
        let empty = d.join("empty");
        let growing = check(empty.to_str().unwrap(), "", &HashMap::new(), true);
        assert_eq!(
            growing.map(|a| a.identity.size),
            Ok(0),
            "a capture may start empty"
        );
        let big = std::fs::File::create(d.join("big")).unwrap();
        big.set_len(wire::MAX_FILE_SIZE + 1).unwrap();
        assert_eq!(code(d.join("big").to_str().unwrap()), "file_too_large");
        let ok = check(
            d.join("ok.bin").to_str().unwrap(),
            "",
            &HashMap::new(),
            false,
        )
        .unwrap();
        assert_eq!(ok.target, "ok.bin");
        assert_eq!(ok.identity.size, 4);
        assert_eq!(
            check(
                d.join("ok.bin").to_str().unwrap(),
                "../x",
                &HashMap::new(),
                false
            )
            .unwrap_err()
            .code,
            "bad_target"
        );
    }
}
