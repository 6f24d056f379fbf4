//! A real browser for the console's tests: Debian's chromium, headless, driven through
//! chromedriver (WebDriver) on a free loopback port. `scripts/test.sh` installs both.

use std::path::PathBuf;
use std::process::Stdio;
use std::time::Duration;

use anyhow::Context as _;
use fantoccini::{Client, ClientBuilder, Locator};
use serde_json::{Value, json};

/// One browser session with its chromedriver; both end when it drops.
pub struct Browser {
    pub client: Client,
    base: String,
    _driver: tokio::process::Child,
}

const CHROMEDRIVER: &str = "/usr/bin/chromedriver";
const CHROMIUM: &str = "/usr/bin/chromium";

impl Browser {
    /// A headless chromium at a laptop's window size, pointed at the console at `base`.
    pub async fn start(base: &str) -> anyhow::Result<Self> {
        anyhow::ensure!(
            std::path::Path::new(CHROMEDRIVER).exists() && std::path::Path::new(CHROMIUM).exists(),
            "the console's tests need Debian's chromium and chromium-driver: \
             `apt-get install chromium chromium-driver` (scripts/test.sh does it)"
        );
        let port = super::free_port()?;
        let driver = tokio::process::Command::new(CHROMEDRIVER)
            .arg(format!("--port={port}"))
            .arg("--allowed-ips=127.0.0.1")
            .stdout(Stdio::null())
            .stderr(Stdio::null())
            // Its own process group, so that dropping the browser ends chromium with it.
            .process_group(0)
            .kill_on_drop(true)
            .spawn()
            .context("starting chromedriver")?;
        let mut caps = serde_json::Map::new();
        caps.insert(
            "goog:chromeOptions".into(),
            json!({
                "binary": CHROMIUM,
                "args": ["--headless=new", "--no-sandbox", "--disable-gpu",
                         "--disable-dev-shm-usage", "--window-size=1366,900",
                         "--no-first-run", "--disable-extensions"],
            }),
        );
        let url = format!("http://127.0.0.1:{port}");
        let deadline = tokio::time::Instant::now() + Duration::from_secs(20);
        let client = loop {
            let connector = hyper_util::client::legacy::connect::HttpConnector::new();
            match ClientBuilder::new(connector)
                .capabilities(caps.clone())
                .connect(&url)
                .await
            {
                Ok(c) => break c,
                Err(e) if tokio::time::Instant::now() < deadline => {
                    tracing::debug!(error = %e, "chromedriver not ready yet");
                    tokio::time::sleep(Duration::from_millis(200)).await;
                }
                Err(e) => return Err(e).context("connecting to chromedriver"),
            }
        };
        Ok(Self {
            client,
            base: base.trim_end_matches('/').to_owned(),
            _driver: driver,
        })
    }

    /// Ends the session, closing the browser.
    pub async fn close(self) -> anyhow::Result<()> {
        self.client.clone().close().await?;
        Ok(())
    }

    /// Opens `path` of the console.
    pub async fn open(&self, path: &str) -> anyhow::Result<()> {
        self.client.goto(&format!("{}{path}", self.base)).await?;
        Ok(())
    }

    /// Signs in with `key` through the sign-in page: the one shown, which knows where to go
    /// back to, or a new one.
    pub async fn sign_in(&self, key: &str) -> anyhow::Result<()> {
        if self.client.find(Locator::Id("api_key")).await.is_err() {
            self.open("/sign-in").await?;
        }
        self.client
            .find(Locator::Id("api_key"))
            .await?
            .send_keys(key)
            .await?;
        self.client
            .find(Locator::Css("main form button[type=submit]"))
            .await?
            .click()
            .await?;
        self.wait_for("nav[aria-label=Main]").await?;
        Ok(())
    }

    /// The first element matching `css`, waited for up to 30 s.
    pub async fn wait_for(&self, css: &str) -> anyhow::Result<fantoccini::elements::Element> {
        match self
            .client
            .wait()
            .at_most(Duration::from_secs(30))
            .for_element(Locator::Css(css))
            .await
        {
            Ok(e) => Ok(e),
            Err(e) => {
                let url = self.client.current_url().await.ok();
                let page = self.client.source().await.unwrap_or_default();
                Err(e).with_context(|| format!("waiting for `{css}` on {url:?}; the page:\n{page}"))
            }
        }
    }

    /// The text of the first element matching `css`.
    pub async fn text(&self, css: &str) -> anyhow::Result<String> {
        let mut stale = 0;
        loop {
            match self.wait_for(css).await?.text().await {
                Ok(t) => return Ok(t),
                // The page was replaced between the find and the read (a navigation or a
                // swap): find it again.
                Err(e) if stale < STALE_RETRIES && is_stale(&e) => stale += 1,
                Err(e) => return Err(e.into()),
            }
        }
    }

    /// Waits up to 30 s for the first element matching `css` to read `expected`: after a form
    /// that navigates, the old page may still be there for a moment.
    pub async fn wait_text(&self, css: &str, expected: &str) -> anyhow::Result<()> {
        let deadline = std::time::Instant::now() + Duration::from_secs(30);
        loop {
            let got = match self.client.find(Locator::Css(css)).await {
                Ok(e) => e.text().await.ok(),
                Err(_) => None,
            };
            if got.as_deref() == Some(expected) {
                return Ok(());
            }
            anyhow::ensure!(
                std::time::Instant::now() < deadline,
                "`{css}` reads {got:?}, not {expected:?}, after 30 s"
            );
            tokio::time::sleep(Duration::from_millis(100)).await;
        }
    }

    /// Clicks the first element matching `css`.
    pub async fn click(&self, css: &str) -> anyhow::Result<()> {
        let mut stale = 0;
        loop {
            match self.wait_for(css).await?.click().await {
                Ok(_) => return Ok(()),
                Err(e) if stale < STALE_RETRIES && is_stale(&e) => stale += 1,
                Err(e) => return Err(e.into()),
            }
        }
    }

    /// Saves a screenshot as `target/screenshots/<name>.png`, which CI keeps.
    pub async fn screenshot(&self, name: &str) -> anyhow::Result<PathBuf> {
        let png = self.client.screenshot().await?;
        let dir = PathBuf::from(env!("CARGO_MANIFEST_DIR")).join("target/screenshots");
        std::fs::create_dir_all(&dir)?;
        let path = dir.join(format!("{name}.png"));
        std::fs::write(&path, png)?;
        Ok(path)
    }

    /// The serious and critical violations axe-core finds on the page: each as
    /// `id: help (targets)`.
    pub async fn accessibility_violations(&self) -> anyhow::Result<Vec<String>> {
        let axe = std::fs::read_to_string(
            PathBuf::from(env!("CARGO_MANIFEST_DIR")).join("tests/console/axe.min.js"),
        )?;
        // Scripts run through WebDriver are not bound by the page's Content-Security-Policy.
        self.client
            .execute(&format!("{axe}\nreturn true;"), vec![])
            .await?;
        let found = self
            .client
            .execute_async(
                "const done = arguments[arguments.length - 1];
                 axe.run(document, {resultTypes: ['violations']})
                    .then(r => done(r.violations))
                    .catch(e => done([{id: 'axe-error', impact: 'critical', help: String(e), nodes: []}]));",
                vec![],
            )
            .await?;
        Ok(found
            .as_array()
            .map_or(&[][..], Vec::as_slice)
            .iter()
            .filter(|v| matches!(v["impact"].as_str(), Some("serious" | "critical")))
            .map(|v| {
                let targets: Vec<String> = v["nodes"]
                    .as_array()
                    .map_or(&[][..], Vec::as_slice)
                    .iter()
                    .map(|n| n["target"].to_string())
                    .collect();
                format!(
                    "{}: {} ({})",
                    v["id"].as_str().unwrap_or("?"),
                    v["help"].as_str().unwrap_or(""),
                    targets.join(", ")
                )
            })
            .collect())
    }

    /// Runs `script` in the page and returns its value.
    pub async fn eval(&self, script: &str) -> anyhow::Result<Value> {
        Ok(self.client.execute(script, vec![]).await?)
    }
}

impl Drop for Browser {
    fn drop(&mut self) {
        // chromedriver and every chromium process it started: a failed test leaves none.
        if let Some(pid) = self._driver.id().and_then(|p| i32::try_from(p).ok()) {
            let _ = nix::sys::signal::killpg(
                nix::unistd::Pid::from_raw(pid),
                nix::sys::signal::Signal::SIGKILL,
            );
        }
    }
}

/// Times an element is found again after the page replaced it under the test.
const STALE_RETRIES: u32 = 5;

/// Whether the element was replaced since it was found.
fn is_stale(e: &fantoccini::error::CmdError) -> bool {
    e.to_string().contains("stale element")
}
