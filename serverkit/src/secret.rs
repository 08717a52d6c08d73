//! Passwords given as files, as container platforms mount secrets (`*_PASSWORD_FILE`).

use std::path::Path;

use anyhow::{Context as _, bail};

/// The password in `path`: its content without the trailing line break.
pub fn read_password_file(path: &Path) -> anyhow::Result<String> {
    let text = std::fs::read_to_string(path)
        .with_context(|| format!("reading the password file {}", path.display()))?;
    let password = text.trim_end_matches(['\n', '\r']);
    if password.is_empty() {
        bail!("the password file {} is empty", path.display());
    }
    Ok(password.to_owned())
}

/// The password of a server's options: `--…-password-file` when given, else the
/// password itself.
pub fn password(plain: Option<&str>, file: Option<&Path>) -> anyhow::Result<Option<String>> {
    match (plain, file) {
        (Some(_), Some(_)) => bail!("give the MQTT password or a password file, not both"),
        (_, Some(path)) => read_password_file(path).map(Some),
        (plain, None) => Ok(plain.map(str::to_owned)),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_password_file_loses_its_line_break_and_an_empty_one_is_refused() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("pw");
        std::fs::write(&path, "s3cret\n").unwrap();
        assert_eq!(
            password(None, Some(&path)).unwrap().as_deref(),
            Some("s3cret")
        );
        assert_eq!(password(Some("x"), None).unwrap().as_deref(), Some("x"));
        assert!(password(Some("x"), Some(&path)).is_err());
        std::fs::write(&path, "\n").unwrap();
        assert!(
            read_password_file(&path)
                .unwrap_err()
                .to_string()
                .contains("empty")
        );
        assert!(
            format!(
                "{:#}",
                read_password_file(&dir.path().join("no")).unwrap_err()
            )
            .contains("no")
        );
    }
}
