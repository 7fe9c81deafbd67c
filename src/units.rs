//! `ferricorn systemd-units NAME`: write a socket + service pair for one
//! app, so `systemctl start NAME.socket` and `journalctl -u NAME` use the
//! operator's own unit name. The unit text is systemd/named/*.in, embedded
//! at build time; only the placeholders change, and, for systemd 253 and
//! later, the reload protocol (see `for_systemd`).

use std::path::Path;

use crate::config::{EXIT_CONFIG_ERROR, UnitArgs};

const SOCKET_IN: &str = include_str!("../systemd/named/NAME.socket.in");
const SERVICE_IN: &str = include_str!("../systemd/named/NAME.service.in");

fn valid_name(n: &str) -> bool {
    !n.is_empty()
        && !n.starts_with('-')
        && n.chars()
            .all(|c| c.is_ascii_alphanumeric() || ":_.\\-".contains(c))
}

fn listen_stream(v: &str) -> Result<String, String> {
    let v = v.strip_prefix("unix:").unwrap_or(v);
    if v.starts_with('/') || (!v.is_empty() && v.chars().all(|c| c.is_ascii_digit())) {
        return Ok(v.to_string());
    }
    match crate::sock::BindSpec::parse(v) {
        Ok(crate::sock::BindSpec::Tcp(hp)) => Ok(hp),
        _ => Err(format!(
            "--listen {v:?} is not HOST:PORT, PORT or a unix socket path"
        )),
    }
}

/// The first systemd with `Type=notify-reload`.
const NOTIFY_RELOAD_SINCE: u32 = 253;

/// The major version of the systemd we run under, from `systemctl --version`
/// ("systemd 257 (257.9-1~deb13u1)"); None without a usable systemctl.
fn running_systemd_version() -> Option<u32> {
    let out = std::process::Command::new("systemctl")
        .arg("--version")
        .stderr(std::process::Stdio::null())
        .output()
        .ok()?;
    parse_systemctl_version(&String::from_utf8_lossy(&out.stdout))
}

fn parse_systemctl_version(out: &str) -> Option<u32> {
    let first = out.lines().next()?;
    let mut words = first.split_whitespace();
    (words.next()? == "systemd").then_some(())?;
    words.next()?.parse().ok()
}

/// The service text for systemd VERSION. The templates are written for
/// systemd 252 (Debian 12): Type=notify, and ExecReload sends the master
/// SIGHUP. From 253 on, Type=notify-reload has systemd send SIGHUP itself and
/// follow the RELOADING=1 ... READY=1 the master sends, so `systemctl reload`
/// waits for the new workers either way. debian/build-deb makes the same
/// edit to ferricorn@.service.
fn for_systemd(service: &str, version: u32) -> String {
    if version < NOTIFY_RELOAD_SINCE {
        return service.to_string();
    }
    let mut out = String::with_capacity(service.len());
    for line in service.lines() {
        match line {
            "Type=notify" => out.push_str("Type=notify-reload"),
            "ExecReload=/bin/kill -s HUP $MAINPID" | "ExecReload=/bin/sleep 1" => continue,
            l if l.starts_with("# systemd 252 (bookworm) has no Type=notify-reload") => continue,
            l => out.push_str(&l.replace(
                "# a reload (SIGHUP), STATUS= lines",
                "# a reload (SIGHUP from systemd), STATUS= lines",
            )),
        }
        out.push('\n');
    }
    out
}

pub fn render(a: &UnitArgs) -> Result<[(String, String); 2], String> {
    if !valid_name(&a.name) {
        return Err(format!(
            "{:?} is not a valid unit name (letters, digits, ':', '_', '.', '-', no '@')",
            a.name
        ));
    }
    let config = std::path::absolute(&a.config).map_err(|e| format!("--config: {e}"))?;
    let exe = std::env::current_exe().map_err(|e| format!("cannot find our own binary: {e}"))?;
    let streams: Vec<String> = if a.listen.is_empty() {
        vec![format!("/run/ferricorn/{}.sock", a.name)]
    } else {
        a.listen
            .iter()
            .map(|l| listen_stream(l))
            .collect::<Result<_, _>>()?
    };
    let listen = streams
        .iter()
        .map(|s| format!("ListenStream={s}"))
        .collect::<Vec<_>>()
        .join("\n");
    let group = a.group.clone().unwrap_or_else(|| a.user.clone());
    let fill = |t: &str| {
        t.replace("@NAME@", &a.name)
            .replace("@CONFIG@", &config.display().to_string())
            .replace("@FERRICORN@", &exe.display().to_string())
            .replace("@USER@", &a.user)
            .replace("@GROUP@", &group)
            .replace("@LISTEN_STREAMS@", &listen)
    };
    Ok([
        (format!("{}.socket", a.name), fill(SOCKET_IN)),
        (
            format!("{}.service", a.name),
            for_systemd(
                &fill(SERVICE_IN),
                a.systemd_version
                    .or_else(running_systemd_version)
                    .unwrap_or(NOTIFY_RELOAD_SINCE - 1),
            ),
        ),
    ])
}

pub fn write(a: &UnitArgs) -> i32 {
    let units = match render(a) {
        Ok(u) => u,
        Err(e) => {
            eprintln!("ferricorn systemd-units: {e}");
            return EXIT_CONFIG_ERROR;
        }
    };
    if a.output_dir == Path::new("-") {
        for (name, text) in &units {
            println!("# {name}\n{text}");
        }
        return 0;
    }
    for (name, _) in &units {
        let p = a.output_dir.join(name);
        if p.exists() && !a.force {
            eprintln!(
                "ferricorn systemd-units: {} exists (use --force to overwrite)",
                p.display()
            );
            return 1;
        }
    }
    for (name, text) in &units {
        let p = a.output_dir.join(name);
        if let Err(e) = std::fs::write(&p, text) {
            eprintln!("ferricorn systemd-units: writing {}: {e}", p.display());
            return 1;
        }
        println!("wrote {}", p.display());
    }
    println!(
        "now run: systemctl daemon-reload && systemctl enable --now {}.socket",
        a.name
    );
    0
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn systemctl_version_is_parsed() {
        let out = "systemd 257 (257.9-1~deb13u1)\n+PAM +AUDIT +SELINUX\n";
        assert_eq!(parse_systemctl_version(out), Some(257));
        assert_eq!(
            parse_systemctl_version("systemd 252 (252.39-1~deb12u1)"),
            Some(252)
        );
        assert_eq!(parse_systemctl_version(""), None);
        assert_eq!(parse_systemctl_version("not systemd"), None);
    }

    #[test]
    fn notify_reload_from_253_on() {
        let old = for_systemd(SERVICE_IN, 252);
        assert_eq!(old, SERVICE_IN);
        assert!(old.lines().any(|l| l == "Type=notify"));
        assert!(old.lines().any(|l| l.starts_with("ExecReload=")));

        let new = for_systemd(SERVICE_IN, 257);
        assert!(new.lines().any(|l| l == "Type=notify-reload"));
        assert!(!new.lines().any(|l| l == "Type=notify"));
        assert!(!new.contains("ExecReload="), "{new}");
        assert!(!new.contains("has no Type=notify-reload"), "{new}");
        // nothing else changes
        assert_eq!(new.lines().count(), SERVICE_IN.lines().count() - 3);
    }
}
