//! Remote URLs as git understands them: `scheme://[user@]host[:port]/path` and scp-like
//! `[user@]host:path`. Local paths and `file://` are rejected because a cluster cannot
//! clone them; credentials embedded in a URL are stripped before anything else sees it.

use crate::error::{Error, Result};

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Scheme {
    Https,
    Http,
    Ssh,
    Git,
}

impl Scheme {
    pub fn as_str(self) -> &'static str {
        match self {
            Scheme::Https => "https",
            Scheme::Http => "http",
            Scheme::Ssh => "ssh",
            Scheme::Git => "git",
        }
    }
}

#[derive(Debug, Clone, PartialEq, Eq)]
pub struct RemoteUrl {
    pub scheme: Scheme,
    pub user: Option<String>,
    pub host: String,
    pub port: Option<u16>,
    /// The path on the server without the leading `/`, as given (`group/sub/repo.git`).
    pub path: String,
    /// Written as `[user@]host:path`.
    pub scp_like: bool,
}

impl RemoteUrl {
    pub fn parse(url: &str) -> Result<RemoteUrl> {
        let invalid = |reason: &str| Error::InvalidUrl {
            url: url.to_string(),
            reason: reason.to_string(),
        };
        if url.is_empty() {
            return Err(invalid("it is empty"));
        }
        if url.chars().any(|c| c.is_control() || c == ' ') {
            return Err(invalid("it contains spaces or control characters"));
        }
        if let Some((scheme, rest)) = url.split_once("://") {
            let scheme = match scheme.to_ascii_lowercase().as_str() {
                "https" => Scheme::Https,
                "http" => Scheme::Http,
                "ssh" | "git+ssh" | "ssh+git" => Scheme::Ssh,
                "git" => Scheme::Git,
                "file" => {
                    return Err(Error::LocalRemote {
                        url: url.to_string(),
                    })
                }
                other => {
                    return Err(invalid(&format!(
                        "the scheme {other:?} is not supported (use https, http, ssh or git)"
                    )))
                }
            };
            let (authority, path) = rest.split_once('/').unwrap_or((rest, ""));
            let (user, hostport) = match authority.rsplit_once('@') {
                Some((user, hostport)) => (Some(user.to_string()), hostport),
                None => (None, authority),
            };
            let (host, port) = split_host_port(hostport).map_err(|r| invalid(&r))?;
            let path = path.trim_start_matches('/');
            check_path(path).map_err(|r| invalid(&r))?;
            return Ok(RemoteUrl {
                scheme,
                user: user.filter(|u| !u.is_empty()),
                host,
                port,
                path: path.to_string(),
                scp_like: false,
            });
        }
        // scp-like: a colon comes before any slash (git's own rule), else it is a path.
        let Some(colon) = scp_colon(url) else {
            return Err(Error::LocalRemote {
                url: url.to_string(),
            });
        };
        let (userhost, path) = (&url[..colon], &url[colon + 1..]);
        let (user, host) = match userhost.rsplit_once('@') {
            Some((user, host)) => (Some(user.to_string()), host),
            None => (None, userhost),
        };
        let host = host.trim_start_matches('[').trim_end_matches(']');
        if host.len() == 1 && host.chars().all(|c| c.is_ascii_alphabetic()) && user.is_none() {
            // `C:\repo` or `C:/repo`: a Windows drive, not a host.
            return Err(Error::LocalRemote {
                url: url.to_string(),
            });
        }
        check_host(host).map_err(|r| invalid(&r))?;
        let path = path.trim_start_matches('/');
        check_path(path).map_err(|r| invalid(&r))?;
        Ok(RemoteUrl {
            scheme: Scheme::Ssh,
            user: user.filter(|u| !u.is_empty()),
            host: host.to_string(),
            port: None,
            path: path.to_string(),
            scp_like: true,
        })
    }

    /// The HTTPS form of the same repository (`git@host:org/repo.git` →
    /// `https://host/org/repo.git`); ssh and git ports do not carry over to https.
    pub fn to_https(&self) -> String {
        let port = match (self.scheme, self.port) {
            (Scheme::Https | Scheme::Http, Some(p)) => format!(":{p}"),
            _ => String::new(),
        };
        format!("https://{}{port}/{}", host_for_url(&self.host), self.path)
    }

    /// The last path segment without `.git`: `group/sub/repo.git` → `repo`.
    pub fn repo_name(&self) -> &str {
        let last = self
            .path
            .trim_end_matches('/')
            .rsplit('/')
            .next()
            .unwrap_or("");
        last.strip_suffix(".git").unwrap_or(last)
    }

    /// Everything before the repository name: `group/sub/repo.git` → `group/sub`.
    pub fn owner(&self) -> &str {
        let path = self.path.trim_end_matches('/');
        path.rsplit_once('/').map(|(owner, _)| owner).unwrap_or("")
    }
}

fn host_for_url(host: &str) -> String {
    if host.contains(':') {
        format!("[{host}]")
    } else {
        host.to_string()
    }
}

fn scp_colon(url: &str) -> Option<usize> {
    // A bracketed host may itself contain colons: `[::1]:repo`, `git@[::1]:repo`.
    let search_from = match (url.find('['), url.find(']')) {
        (Some(open), Some(close)) if open < close && !url[..open].contains('/') => close,
        _ => 0,
    };
    let colon = search_from + url[search_from..].find(':')?;
    if url[..colon].contains('/') {
        None
    } else {
        Some(colon)
    }
}

fn split_host_port(hostport: &str) -> std::result::Result<(String, Option<u16>), String> {
    let (host, port) = if let Some(rest) = hostport.strip_prefix('[') {
        let (host, after) = rest
            .split_once(']')
            .ok_or_else(|| "unclosed [ in the host".to_string())?;
        (host, after.strip_prefix(':'))
    } else {
        match hostport.rsplit_once(':') {
            Some((host, port)) => (host, Some(port)),
            None => (hostport, None),
        }
    };
    check_host(host)?;
    let port = match port {
        None | Some("") => None,
        Some(p) => Some(
            p.parse::<u16>()
                .ok()
                .filter(|p| *p != 0)
                .ok_or_else(|| format!("the port {p:?} is not a number from 1 to 65535"))?,
        ),
    };
    Ok((host.to_string(), port))
}

fn check_host(host: &str) -> std::result::Result<(), String> {
    if host.is_empty() {
        return Err("it has no host".into());
    }
    if host.starts_with('-') {
        return Err("the host starts with '-'".into());
    }
    if !host
        .chars()
        .all(|c| c.is_ascii_alphanumeric() || matches!(c, '.' | '-' | '_' | ':' | '%'))
    {
        return Err(format!(
            "the host {host:?} has characters a host name cannot have"
        ));
    }
    Ok(())
}

fn check_path(path: &str) -> std::result::Result<(), String> {
    if path.trim_end_matches('/').is_empty() {
        return Err("it names no repository path".into());
    }
    if path.starts_with('-') {
        return Err("the path starts with '-'".into());
    }
    Ok(())
}

/// Removes credentials from a URL: for http(s) the whole user-info part (a user name there is
/// usually a token), for ssh only a password. Returns the clean URL and whether anything was
/// removed. Works on strings that are not valid URLs too, so nothing secret slips through a
/// parse error.
pub fn strip_credentials(url: &str) -> (String, bool) {
    if let Some((scheme, rest)) = url.split_once("://") {
        let authority_end = rest.find('/').unwrap_or(rest.len());
        let (authority, tail) = rest.split_at(authority_end);
        if let Some((userinfo, hostport)) = authority.rsplit_once('@') {
            let lower = scheme.to_ascii_lowercase();
            if lower == "http" || lower == "https" {
                return (format!("{scheme}://{hostport}{tail}"), true);
            }
            if let Some((user, _password)) = userinfo.split_once(':') {
                return (format!("{scheme}://{user}@{hostport}{tail}"), true);
            }
        }
        return (url.to_string(), false);
    }
    // scp-like `user:password@host:path`
    if let Some(colon) = scp_colon(url) {
        if let Some(at) = url.find('@') {
            if at > colon {
                let (user, _) = url[..at].split_once(':').unwrap_or((&url[..at], ""));
                return (format!("{user}{}", &url[at..]), true);
            }
        }
    }
    (url.to_string(), false)
}

#[cfg(test)]
mod tests {
    use super::*;

    fn parse(url: &str) -> RemoteUrl {
        RemoteUrl::parse(url).unwrap_or_else(|e| panic!("{url}: {e}"))
    }

    /// url, scheme, user, host, port, path, scp-like
    type Case<'a> = (
        &'a str,
        Scheme,
        Option<&'a str>,
        &'a str,
        Option<u16>,
        &'a str,
        bool,
    );

    #[test]
    fn parses_every_remote_form() {
        let cases: &[Case] = &[
            (
                "https://github.com/org/repo.git",
                Scheme::Https,
                None,
                "github.com",
                None,
                "org/repo.git",
                false,
            ),
            (
                "http://git.local:8080/org/repo",
                Scheme::Http,
                None,
                "git.local",
                Some(8080),
                "org/repo",
                false,
            ),
            (
                "ssh://git@host.example:2222/group/sub/repo.git",
                Scheme::Ssh,
                Some("git"),
                "host.example",
                Some(2222),
                "group/sub/repo.git",
                false,
            ),
            (
                "ssh://host/repo",
                Scheme::Ssh,
                None,
                "host",
                None,
                "repo",
                false,
            ),
            (
                "git+ssh://git@host/x/y",
                Scheme::Ssh,
                Some("git"),
                "host",
                None,
                "x/y",
                false,
            ),
            (
                "git@github.com:org/repo.git",
                Scheme::Ssh,
                Some("git"),
                "github.com",
                None,
                "org/repo.git",
                true,
            ),
            (
                "host:group/sub/sub2/repo",
                Scheme::Ssh,
                None,
                "host",
                None,
                "group/sub/sub2/repo",
                true,
            ),
            (
                "git@[::1]:repo.git",
                Scheme::Ssh,
                Some("git"),
                "::1",
                None,
                "repo.git",
                true,
            ),
            (
                "git://127.0.0.1:9418/repo.git",
                Scheme::Git,
                None,
                "127.0.0.1",
                Some(9418),
                "repo.git",
                false,
            ),
            (
                "https://[::1]:8443/a/b.git",
                Scheme::Https,
                None,
                "::1",
                Some(8443),
                "a/b.git",
                false,
            ),
        ];
        for (url, scheme, user, host, port, path, scp) in cases {
            let u = parse(url);
            assert_eq!(
                (
                    u.scheme,
                    u.user.as_deref(),
                    u.host.as_str(),
                    u.port,
                    u.path.as_str(),
                    u.scp_like
                ),
                (*scheme, *user, *host, *port, *path, *scp),
                "{url}"
            );
        }
    }

    #[test]
    fn nested_groups_keep_owner_and_repo() {
        let u = parse("git@gitlab.com:group/sub/repo.git");
        assert_eq!((u.owner(), u.repo_name()), ("group/sub", "repo"));
        assert_eq!(u.to_https(), "https://gitlab.com/group/sub/repo.git");
    }

    #[test]
    fn to_https_drops_ssh_ports_and_keeps_https_ports() {
        assert_eq!(
            parse("ssh://git@h:2222/a/b.git").to_https(),
            "https://h/a/b.git"
        );
        assert_eq!(
            parse("https://h:8443/a/b.git").to_https(),
            "https://h:8443/a/b.git"
        );
        assert_eq!(parse("git://h/a/b.git").to_https(), "https://h/a/b.git");
        assert_eq!(parse("git@[::1]:r.git").to_https(), "https://[::1]/r.git");
    }

    #[test]
    fn local_paths_and_file_urls_are_local_remotes() {
        for url in [
            "/srv/git/repo.git",
            "../repo",
            "./a:b",
            "file:///srv/repo.git",
            "repo",
            "C:\\repo",
            "C:/repo",
        ] {
            assert!(
                matches!(RemoteUrl::parse(url), Err(Error::LocalRemote { .. })),
                "{url}"
            );
        }
    }

    #[test]
    fn rejects_option_injection_bad_schemes_and_control_characters() {
        for url in [
            "ssh://-oProxyCommand=touch%20x/repo",
            "-oProxyCommand=x:repo",
            "git@host:-repo",
            "ftp://host/repo",
            "https://host/repo\nx",
            "https://host/a b",
            "https:///repo",
            "https://host",
            "https://host:99999/repo",
            "",
        ] {
            assert!(
                matches!(RemoteUrl::parse(url), Err(Error::InvalidUrl { .. })),
                "{url:?}"
            );
        }
    }

    #[test]
    fn strips_credentials_from_http_urls_and_ssh_passwords() {
        let cases = [
            ("https://user:tok@host/x", "https://host/x", true),
            (
                "https://ghp_token@github.com/o/r.git",
                "https://github.com/o/r.git",
                true,
            ),
            ("http://u:p@h:8080/r", "http://h:8080/r", true),
            ("https://host/x", "https://host/x", false),
            ("ssh://git@host/x", "ssh://git@host/x", false),
            ("ssh://git:secret@host/x", "ssh://git@host/x", true),
            ("git@host:x.git", "git@host:x.git", false),
            ("https://user:p@ss@host/x", "https://host/x", true),
        ];
        for (input, clean, had) in cases {
            assert_eq!(
                strip_credentials(input),
                (clean.to_string(), had),
                "{input}"
            );
        }
    }
}
