//! `FERRICORN_CMD_ARGS`: command-line arguments from the environment, as
//! Gunicorn's `GUNICORN_CMD_ARGS` (handy where the command line is fixed:
//! a container image's CMD, a packaged unit). They go before the real
//! arguments, so those win (clap keeps the last value of an option); a
//! `--bind` on the command line replaces the variable's binds rather than
//! adding to them, as in Gunicorn. Where `FERRICORN_CMD_ARGS` is not set,
//! `GUNICORN_CMD_ARGS` is read instead, so a Gunicorn deployment's
//! environment keeps working (its Gunicorn-only options are then dealt with
//! as on the command line: src/gunicorn_only.rs).

use std::ffi::OsString;

const VARS: [&str; 2] = ["FERRICORN_CMD_ARGS", "GUNICORN_CMD_ARGS"];

/// The process's argv with the variable's arguments spliced in after the
/// program name (not for the `generate`/`systemd-units` subcommands). Err
/// names the variable and what is wrong with it.
pub fn argv() -> Result<Vec<OsString>, String> {
    let mut real: Vec<OsString> = std::env::args_os().collect();
    let Some((var, value)) = VARS
        .iter()
        .find_map(|v| std::env::var_os(v).map(|value| (*v, value)))
    else {
        return Ok(real);
    };
    let bad = |e: &str| format!("invalid setting `{var}`: {e}");
    let value = value.into_string().map_err(|_| bad("not valid UTF-8"))?;
    if names_a_subcommand(&real) || real.is_empty() {
        return Ok(real);
    }
    let mut extra = split(&value).map_err(|e| bad(&e))?;
    let binds_on_cli = real[1..]
        .iter()
        .any(|a| is_bind(&a.to_string_lossy()).is_some());
    if binds_on_cli {
        extra = drop_binds(extra);
    }
    let rest = real.split_off(1);
    real.extend(extra.into_iter().map(OsString::from));
    real.extend(rest);
    Ok(real)
}

/// Whether argv runs a subcommand (`generate`, `systemd-units`), whose
/// arguments are not the server's.
pub fn names_a_subcommand(argv: &[OsString]) -> bool {
    argv.get(1)
        .is_some_and(|a| a == "generate" || a == "systemd-units")
}

/// Some(takes_a_value) if `a` is a bind option: `-b X` / `--bind X` take
/// the next word, `-bX` / `--bind=X` do not.
fn is_bind(a: &str) -> Option<bool> {
    match a {
        "-b" | "--bind" => Some(true),
        _ if a.starts_with("--bind=") || (a.starts_with("-b") && a.len() > 2) => Some(false),
        _ => None,
    }
}

fn drop_binds(args: Vec<String>) -> Vec<String> {
    let mut out = Vec::new();
    let mut it = args.into_iter();
    while let Some(a) = it.next() {
        match is_bind(&a) {
            Some(true) => {
                it.next(); // its value
            }
            Some(false) => {}
            None => out.push(a),
        }
    }
    out
}

/// Split like a POSIX shell (Python's shlex.split, which Gunicorn uses):
/// whitespace separates words; '...' is literal; "..." and bare words
/// take `\` escapes.
fn split(s: &str) -> Result<Vec<String>, String> {
    let mut words = Vec::new();
    let mut cur = String::new();
    let mut in_word = false;
    let mut chars = s.chars();
    while let Some(c) = chars.next() {
        match c {
            c if c.is_whitespace() => {
                if in_word {
                    words.push(std::mem::take(&mut cur));
                    in_word = false;
                }
            }
            '\'' => {
                in_word = true;
                loop {
                    match chars.next() {
                        Some('\'') => break,
                        Some(c) => cur.push(c),
                        None => return Err("unterminated ' quote".into()),
                    }
                }
            }
            '"' => {
                in_word = true;
                loop {
                    match chars.next() {
                        Some('"') => break,
                        Some('\\') => match chars.next() {
                            Some(c @ ('"' | '\\' | '$' | '`')) => cur.push(c),
                            Some(c) => {
                                cur.push('\\');
                                cur.push(c);
                            }
                            None => return Err("unterminated \" quote".into()),
                        },
                        Some(c) => cur.push(c),
                        None => return Err("unterminated \" quote".into()),
                    }
                }
            }
            '\\' => {
                in_word = true;
                match chars.next() {
                    Some(c) => cur.push(c),
                    None => return Err("trailing backslash".into()),
                }
            }
            c => {
                in_word = true;
                cur.push(c);
            }
        }
    }
    if in_word {
        words.push(cur);
    }
    Ok(words)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn splits_like_a_shell() {
        assert_eq!(
            split(r#" -w 3  --access-logformat '%(h)s "%(r)s"' -e A="b c" x\ y "" "#).unwrap(),
            [
                "-w",
                "3",
                "--access-logformat",
                r#"%(h)s "%(r)s""#,
                "-e",
                "A=b c",
                "x y",
                ""
            ]
        );
        assert!(split("'open").is_err());
        assert!(split("\"open").is_err());
    }

    #[test]
    fn cli_binds_replace_the_variables() {
        let args = |v: &[&str]| v.iter().map(|s| s.to_string()).collect::<Vec<_>>();
        assert_eq!(
            drop_binds(args(&[
                "-b",
                "0.0.0.0:80",
                "-w",
                "2",
                "--bind=[::]:80",
                "-bunix:/x",
                "--timeout",
                "5"
            ])),
            ["-w", "2", "--timeout", "5"]
        );
    }
}
