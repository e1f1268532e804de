//! A real browser for the web console's tests: headless Chromium (Debian's `chromium`)
//! driven over the DevTools protocol with `headless_chrome`. Nothing is downloaded: without
//! Chromium the test fails, saying how to install it.
//!
//! [`Console`] is one tab on the console of a broker's management listener, with the few
//! things a test does: type into inputs and click (real input events), wait until a
//! JavaScript condition on the page holds, read text, and take screenshots.

use headless_chrome::protocol::cdp::Emulation;
use headless_chrome::protocol::cdp::Page::CaptureScreenshotFormatOption;
use headless_chrome::{Browser, LaunchOptions, Tab};
use serde_json::Value;
use std::ffi::OsStr;
use std::path::{Path, PathBuf};
use std::sync::Arc;
use std::time::{Duration, Instant};

/// How long a condition may take to hold (the console refreshes every 5 s).
pub const WAIT: Duration = Duration::from_secs(20);

/// The Chromium to drive: `$WARREN_CHROMIUM`, else `chromium` (Debian), `chromium-browser`
/// or `google-chrome` on the PATH. Panics with how to install it when there is none.
pub fn chromium_path() -> PathBuf {
    if let Some(p) = std::env::var_os("WARREN_CHROMIUM") {
        return PathBuf::from(p);
    }
    let path = std::env::var_os("PATH").unwrap_or_default();
    for name in ["chromium", "chromium-browser", "google-chrome"] {
        for dir in std::env::split_paths(&path) {
            let candidate = dir.join(name);
            if candidate.is_file() {
                return candidate;
            }
        }
    }
    panic!(
        "the web console's browser tests need Chromium, and none was found: install Debian's \
         package with `apt-get install -y chromium` (CI's .ci/run does), or set \
         WARREN_CHROMIUM to a Chromium or Chrome binary"
    );
}

/// One browser tab on a console.
pub struct Console {
    pub tab: Arc<Tab>,
    /// `http://127.0.0.1:PORT` of the management listener.
    pub base: String,
    _browser: Browser,
}

impl Console {
    /// A new headless Chromium, with a laptop-sized window, on `base` (`http://host:port`).
    pub fn open(base: &str) -> Console {
        let no_proxy = OsStr::new("--no-proxy-server");
        let options = LaunchOptions::default_builder()
            .path(Some(chromium_path()))
            .headless(true)
            // The tests run as root in CI containers, where Chromium's sandbox cannot start.
            .sandbox(false)
            .window_size(Some((1280, 900)))
            .idle_browser_timeout(Duration::from_secs(120))
            .args(vec![no_proxy])
            .build()
            .expect("Chromium launch options");
        let browser = Browser::new(options).unwrap_or_else(|e| {
            panic!(
                "could not start Chromium ({}): {e}",
                chromium_path().display()
            )
        });
        let tab = browser.new_tab().expect("a browser tab");
        tab.set_default_timeout(WAIT);
        tab.navigate_to(&format!("{base}/"))
            .and_then(|t| t.wait_until_navigated())
            .expect("the console loads");
        Console {
            tab,
            base: base.to_string(),
            _browser: browser,
        }
    }

    /// The value of a JavaScript expression on the page (as JSON).
    pub fn eval(&self, expr: &str) -> Value {
        let js = format!("JSON.stringify((() => {{ try {{ return ({expr}); }} catch (e) {{ return {{__error: String(e)}}; }} }})())");
        let r = self.tab.evaluate(&js, false).expect("evaluate");
        let text = r.value.and_then(|v| v.as_str().map(String::from));
        match text {
            Some(t) => serde_json::from_str(&t).unwrap_or(Value::Null),
            None => Value::Null,
        }
    }

    /// Waits until `expr` is true on the page; panics with `what` and the page's text if it
    /// never is.
    pub fn wait_for(&self, what: &str, expr: &str) {
        let deadline = Instant::now() + WAIT;
        loop {
            if self.eval(expr) == Value::Bool(true) {
                return;
            }
            if Instant::now() > deadline {
                panic!(
                    "in the browser, {what} never happened (waited for `{expr}`); the page says:\n{}",
                    self.text("body")
                );
            }
            std::thread::sleep(Duration::from_millis(100));
        }
    }

    /// The text of the first element matching `selector` ("" if there is none).
    pub fn text(&self, selector: &str) -> String {
        let sel = serde_json::to_string(selector).expect("selector");
        self.eval(&format!(
            "document.querySelector({sel}) ? document.querySelector({sel}).innerText : ''"
        ))
        .as_str()
        .unwrap_or_default()
        .trim()
        .to_string()
    }

    /// Whether an element matches `selector` and is shown.
    pub fn visible(&self, selector: &str) -> bool {
        let sel = serde_json::to_string(selector).expect("selector");
        self.eval(&format!(
            "(() => {{ const e = document.querySelector({sel}); return !!e && !e.closest('[hidden]') && e.getClientRects().length > 0; }})()"
        )) == Value::Bool(true)
    }

    /// Goes to a console page (`#/queues`, …).
    pub fn go(&self, hash: &str) {
        let h = serde_json::to_string(hash).expect("hash");
        self.eval(&format!("location.hash = {h}"));
    }

    /// Clicks the element (a real mouse click at its centre).
    pub fn click(&self, selector: &str) {
        self.tab
            .wait_for_element(selector)
            .and_then(|e| e.click().map(|_| ()))
            .unwrap_or_else(|e| panic!("click {selector}: {e}"));
    }

    /// Types `text` into an input, replacing what was there (real key events).
    pub fn fill(&self, selector: &str, text: &str) {
        let sel = serde_json::to_string(selector).expect("selector");
        self.eval(&format!("document.querySelector({sel}).value = ''"));
        self.tab
            .wait_for_element(selector)
            .and_then(|e| e.type_into(text).map(|_| ()))
            .unwrap_or_else(|e| panic!("type into {selector}: {e}"));
    }

    /// Logs in with the console's form.
    pub fn log_in(&self, user: &str, password: &str) {
        self.wait_for(
            "the log-in form",
            "!document.getElementById('login').hidden",
        );
        self.fill("#login-user", user);
        self.fill("#login-password", password);
        self.click("#login-submit");
    }

    /// Emulates a screen `width` × `height` CSS pixels (a phone, a laptop).
    pub fn screen(&self, width: u32, height: u32) {
        self.tab
            .call_method(Emulation::SetDeviceMetricsOverride {
                width,
                height,
                device_scale_factor: 1.0,
                mobile: width < 800,
                scale: None,
                screen_width: None,
                screen_height: None,
                position_x: None,
                position_y: None,
                dont_set_visible_size: None,
                screen_orientation: None,
                viewport: None,
                display_feature: None,
                device_posture: None,
            })
            .expect("emulate the screen size");
    }

    /// A PNG of the page as shown, written to `dir/name` (the directory is created).
    pub fn screenshot(&self, dir: &Path, name: &str) {
        let png = self
            .tab
            .capture_screenshot(CaptureScreenshotFormatOption::Png, None, None, true)
            .expect("screenshot");
        std::fs::create_dir_all(dir).expect("screenshot directory");
        std::fs::write(dir.join(name), png).expect("write the screenshot");
    }
}
