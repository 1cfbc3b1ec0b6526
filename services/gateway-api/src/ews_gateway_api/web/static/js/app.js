/* Energy Web Server — the single page: login (PIN, then PUK when asked), then the role's pages.
 *
 * Vanilla JS, no build step. Every call goes to this server's /api/v1 (same origin, session cookie);
 * any 401 after login returns to the login screen. Visible text lives in STRINGS (one object per
 * language) so translation is one place; HTML elements carry data-i18n keys.
 */
(function () {
  "use strict";

  // --- strings ---------------------------------------------------------------------------------
  const STRINGS = {
    en: {
      appName: "Energy Web Server",
      loginTitle: "Sign in",
      loginHint: "Enter your 5-digit PIN code.",
      pinLabel: "PIN",
      pukLabel: "PUK",
      pukHint: "14 digits, e.g. 00000 0000 00000 (spaces optional).",
      signIn: "Sign in",
      signingIn: "Signing in…",
      pinFormat: "The PIN is 5 digits.",
      pukFormat: "The PUK is 14 digits.",
      pukNeeded: "This browser needs the PUK too: enter it below.",
      wrongPin: "Wrong PIN.",
      wrongCodes: "Wrong PIN or PUK.",
      tooManyAttempts: "Too many attempts. Try again in {wait}.",
      tooManyAttemptsLater: "Too many attempts. Try again later.",
      badRequest: "The server refused the request: {detail}",
      unreachable: "The server cannot be reached. Check the network and try again.",
      serverError: "Server error ({status}). Try again.",
      sessionEnded: "Your session has ended. Please sign in again.",
      loggedOut: "Logged out. Your PIN is enough to sign in again.",
      locked: "Application locked on this browser. Sign in with PIN and PUK.",
      lock: "Lock",
      logout: "Logout",
      defaultCodesWarning:
        "The default PIN/PUK codes are still in use. Ask an administrator to change them.",
      forbidden: "Your role may not do this.",
      seconds: "{n} s",
      minutes: "{n} min",
      // roles
      role_administrator: "Administrator",
      role_greenUp: "Green'Up",
      role_installer: "Installer",
      role_user: "User",
      // pages
      page_installation: "My installation",
      page_consumption: "Consumptions",
      page_greenup: "Green'Up",
      installationTitle: "My installation",
      consumptionTitle: "Total electricity",
      greenupTitle: "Charging stations",
      // consumption
      previousDay: "Previous day",
      nextDay: "Next day",
      today: "Today",
      dayTotal: "Total of the day",
      yesterdayTotal: "Yesterday",
      previousDayTotal: "Previous day",
      hourly: "per hour, kWh",
      noData: "No consumption recorded for this day.",
      chartUnavailable: "The chart library did not load.",
      loadFailed: "Could not load the data: {detail}",
      updatedAt: "Updated {time}",
      // devices
      noDevices: "No devices.",
      noChargers: "No charging stations.",
      power: "Power",
      energy: "Energy",
      water: "Water",
      gas: "Gas",
      breaker: "Breaker",
      charger: "Charger",
      chargeProcess: "Current charge",
      priority: "Priority",
      lastReading: "Last reading {time}",
      address: "Addr. {address}",
      neverRead: "No reading yet",
      state_on: "On",
      state_off: "Off",
      "state_comm-error": "Communication error",
      state_fault: "Charger fault",
      state_unknown: "Unknown",
      // green'up commands
      start: "Start",
      wait: "Wait",
      commandSent: "Command sent, waiting for the station…",
      commandDone: "Done.",
      commandFailed: "Failed: {error}",
      commandTimeout: "No answer from the station yet; check again in a moment.",
      // language and codes
      language: "Language",
      codesButton: "Codes",
      codesTitle: "Change PIN and PUK",
      codesHint: "All sessions of the role end; its next sign-in needs the new PIN and PUK.",
      codesRole: "Role",
      currentPin: "Current PIN",
      currentPuk: "Current PUK",
      newPin: "New PIN (5 digits)",
      newPuk: "New PUK (14 digits)",
      saveCodes: "Change the codes",
      codesSaved: "Codes changed. {n} session(s) of this role ended.",
      codesSignedOut: "Codes changed. Sign in with the new PIN and PUK.",
    },
  };

  // L1: the 13 UI languages, each named in itself (the picker never depends on a translation)
  const LANGUAGE_NAMES = {
    zh: "中文",
    de: "Deutsch",
    en: "English",
    es: "Español",
    fr: "Français",
    "fr-BE": "Français (Belgique)",
    el: "Ελληνικά",
    it: "Italiano",
    "nl-BE": "Nederlands (België)",
    nl: "Nederlands",
    pl: "Polski",
    pt: "Português",
    ru: "Русский",
  };

  let lang = "en";
  let locale = "en";

  function t(key, vars) {
    const table = STRINGS[lang] || STRINGS.en;
    let text = key in table ? table[key] : key in STRINGS.en ? STRINGS.en[key] : key;
    if (vars) {
      for (const [name, value] of Object.entries(vars)) text = text.split("{" + name + "}").join(String(value));
    }
    return text;
  }

  function applyStrings(root) {
    for (const node of (root || document).querySelectorAll("[data-i18n]")) node.textContent = t(node.dataset.i18n);
    for (const node of (root || document).querySelectorAll("[data-i18n-title]")) {
      node.title = t(node.dataset.i18nTitle);
      node.setAttribute("aria-label", node.title);
    }
    document.title = t("appName");
  }

  // --- small DOM helpers -----------------------------------------------------------------------
  const $ = (id) => document.getElementById(id);

  function el(tag, attrs, ...children) {
    const node = document.createElement(tag);
    for (const [name, value] of Object.entries(attrs || {})) {
      if (value === undefined || value === null || value === false) continue;
      if (name === "class") node.className = value;
      else if (name === "text") node.textContent = value;
      else if (name.startsWith("on")) node.addEventListener(name.slice(2), value);
      else node.setAttribute(name, value === true ? "" : value);
    }
    for (const child of children.flat()) {
      if (child === null || child === undefined || child === false) continue;
      node.append(child instanceof Node ? child : document.createTextNode(String(child)));
    }
    return node;
  }

  function setMessage(node, text, kind) {
    node.textContent = text || "";
    node.className = "message" + (text ? " message-" + (kind || "info") : "");
  }

  // --- API -------------------------------------------------------------------------------------
  class ApiError extends Error {
    constructor(status, body, headers) {
      super(detailOf(body) || (status ? "HTTP " + status : "network error"));
      this.status = status;
      this.body = body;
      this.headers = headers;
    }
  }

  function detailOf(body) {
    if (!body || typeof body !== "object") return "";
    if (typeof body.detail === "string") return body.detail;
    return "";
  }

  function cookie(name) {
    for (const part of document.cookie.split(";")) {
      const [key, ...rest] = part.trim().split("=");
      if (key === name) return decodeURIComponent(rest.join("="));
    }
    return null;
  }

  /** fetch a same-origin API path; JSON in and out; throws ApiError on a non-2xx answer. */
  async function request(method, path, body) {
    const headers = { Accept: "application/json" };
    const options = { method, headers, credentials: "same-origin", cache: "no-store" };
    if (body !== undefined) {
      headers["Content-Type"] = "application/json";
      options.body = JSON.stringify(body);
    }
    const csrf = cookie("csrftoken");
    if (csrf && method !== "GET") headers["X-CSRFToken"] = csrf;
    let response;
    try {
      response = await fetch(path, options);
    } catch (error) {
      throw new ApiError(0, null, null);
    }
    const text = await response.text();
    let data = null;
    if (text) {
      try {
        data = JSON.parse(text);
      } catch (error) {
        data = null;
      }
    }
    if (!response.ok) throw new ApiError(response.status, data, response.headers);
    return data;
  }

  /** An API call made while logged in: a 401 ends the session in the UI. */
  async function api(method, path, body) {
    try {
      return await request(method, path, body);
    } catch (error) {
      if (error instanceof ApiError && error.status === 401) {
        showLogin(t("sessionEnded"), "info");
      }
      throw error;
    }
  }

  function errorText(error) {
    if (!(error instanceof ApiError)) return String(error && error.message ? error.message : error);
    if (error.status === 0) return t("unreachable");
    if (error.status === 403) return t("forbidden");
    if (error.status >= 500) return t("serverError", { status: error.status });
    return error.message;
  }

  // --- formatting ------------------------------------------------------------------------------
  function number(value, digits) {
    return new Intl.NumberFormat(locale, { maximumFractionDigits: digits, minimumFractionDigits: digits }).format(value);
  }

  /** Wh -> "1.23 kWh" (MWh from 1000 kWh up). */
  function formatEnergy(wh) {
    if (wh === null || wh === undefined || !isFinite(wh)) return "–";
    const kwh = wh / 1000;
    const abs = Math.abs(kwh);
    if (abs >= 10000) return number(kwh / 1000, 2) + " MWh";
    return number(kwh, abs >= 1000 ? 0 : abs >= 100 ? 1 : 2) + " kWh";
  }

  /** W -> "1.23 kW". */
  function formatPower(w) {
    if (w === null || w === undefined || !isFinite(w)) return "–";
    const kw = w / 1000;
    return number(kw, Math.abs(kw) >= 100 ? 1 : 2) + " kW";
  }

  /** dm³ -> "1.234 m³". */
  function formatVolume(dm3) {
    if (dm3 === null || dm3 === undefined || !isFinite(dm3)) return "–";
    return number(dm3 / 1000, 3) + " m³";
  }

  function formatMoney(amount, currency) {
    if (amount === null || amount === undefined || !isFinite(amount)) return "";
    if (currency) {
      try {
        return new Intl.NumberFormat(locale, { style: "currency", currency }).format(amount);
      } catch (error) {
        /* not an ISO 4217 code: fall through */
      }
    }
    return number(amount, 2) + (currency ? " " + currency : "");
  }

  function formatWait(seconds) {
    const s = Math.max(1, Math.ceil(seconds));
    return s < 120 ? t("seconds", { n: s }) : t("minutes", { n: Math.ceil(s / 60) });
  }

  function formatTime(iso) {
    const date = new Date(iso);
    if (isNaN(date)) return "";
    return date.toLocaleTimeString(locale, { hour: "2-digit", minute: "2-digit", second: "2-digit" });
  }

  // Local calendar dates as YYYY-MM-DD (the browser's day; the server buckets in the site's zone).
  function isoDate(date) {
    const pad = (n) => String(n).padStart(2, "0");
    return date.getFullYear() + "-" + pad(date.getMonth() + 1) + "-" + pad(date.getDate());
  }
  function parseDate(iso) {
    const [y, m, d] = iso.split("-").map(Number);
    return new Date(y, m - 1, d, 12); // noon: safe from DST edges
  }
  function addDays(iso, days) {
    const date = parseDate(iso);
    date.setDate(date.getDate() + days);
    return isoDate(date);
  }
  // "Today" is the site's day (its time zone from /api/v1/me), whatever the browser's zone.
  let siteTimeZone = null;
  function today() {
    if (siteTimeZone) {
      try {
        return new Intl.DateTimeFormat("en-CA", { timeZone: siteTimeZone }).format(new Date());
      } catch (e) {
        /* unknown to this browser: its own day */
      }
    }
    return isoDate(new Date());
  }

  // --- state -----------------------------------------------------------------------------------
  const REFRESH_MS = 30000;
  const COMMAND_POLL_MS = 1000;
  const COMMAND_POLL_MAX = 30;

  const state = {
    me: null,
    page: null,
    timer: null,
    pukShown: false,
    retryTimer: null,
    day: today(),
    followToday: true,
    chart: null,
    loads: { installation: 0, consumption: 0, greenup: 0 }, // request counters: drop stale answers
    commands: {}, // device id -> {text, kind, busy}
  };

  // --- login -----------------------------------------------------------------------------------
  function showPuk(show) {
    state.pukShown = show;
    $("puk-field").hidden = !show;
    if (!show) $("puk").value = "";
  }

  function showLogin(message, kind, needPuk) {
    stopRefresh();
    state.me = null;
    state.page = null;
    state.commands = {};
    disposeChart();
    $("app-view").hidden = true;
    $("session-bar").hidden = true;
    $("default-codes-banner").hidden = true;
    $("login-view").hidden = false;
    document.body.classList.remove("signed-in");
    $("pin").value = "";
    showPuk(Boolean(needPuk));
    setMessage($("login-message"), message || "", kind);
    $("pin").focus();
  }

  function pukRequired(body) {
    if (!body || typeof body !== "object") return false;
    return body.puk_required === true || Boolean(body.extra && body.extra.puk_required === true);
  }

  function retryAfter(error) {
    const header = error.headers && error.headers.get("Retry-After");
    if (header && /^\d+$/.test(header.trim())) return Number(header);
    if (header) {
      const when = Date.parse(header);
      if (!isNaN(when)) return (when - Date.now()) / 1000;
    }
    const body = error.body || {};
    const value = body.retry_after ?? (body.extra && body.extra.retry_after);
    return typeof value === "number" ? value : null;
  }

  function holdLogin(seconds) {
    const button = $("login-submit");
    const until = Date.now() + seconds * 1000;
    clearInterval(state.retryTimer);
    button.disabled = true;
    const tick = () => {
      const left = (until - Date.now()) / 1000;
      if (left <= 0) {
        clearInterval(state.retryTimer);
        button.disabled = false;
        setMessage($("login-message"), "");
        return;
      }
      setMessage($("login-message"), t("tooManyAttempts", { wait: formatWait(left) }), "error");
    };
    tick();
    state.retryTimer = setInterval(tick, 1000);
  }

  async function onLogin(event) {
    event.preventDefault();
    const message = $("login-message");
    const pin = $("pin").value.trim();
    const puk = $("puk").value.replace(/\s+/g, "");
    if (!/^\d{5}$/.test(pin)) {
      setMessage(message, t("pinFormat"), "error");
      $("pin").focus();
      return;
    }
    if (state.pukShown && puk !== "" && !/^\d{14}$/.test(puk)) {
      setMessage(message, t("pukFormat"), "error");
      $("puk").focus();
      return;
    }
    const body = state.pukShown && puk ? { pin, puk } : { pin };
    const button = $("login-submit");
    button.disabled = true;
    button.textContent = t("signingIn");
    let held = false;
    try {
      await request("POST", "/api/v1/auth/login", body);
      setMessage(message, "");
      await enterApp();
    } catch (error) {
      if (!(error instanceof ApiError)) {
        setMessage(message, errorText(error), "error");
      } else if (error.status === 401) {
        if (pukRequired(error.body)) {
          if (!state.pukShown) showPuk(true);
          setMessage(message, t("pukNeeded"), "info");
          $("puk").focus();
        } else {
          $("pin").value = "";
          if (state.pukShown) $("puk").value = "";
          setMessage(message, state.pukShown ? t("wrongCodes") : t("wrongPin"), "error");
          $("pin").focus();
        }
      } else if (error.status === 429) {
        const wait = retryAfter(error);
        if (wait !== null && wait > 0) {
          held = true;
          holdLogin(wait);
        } else {
          setMessage(message, t("tooManyAttemptsLater"), "error");
        }
      } else if (error.status === 400 || error.status === 422) {
        setMessage(message, t("badRequest", { detail: error.message }), "error");
      } else {
        setMessage(message, errorText(error), "error");
      }
    } finally {
      button.textContent = t("signIn");
      if (!held) button.disabled = false;
    }
  }

  function formatPukInput() {
    const input = $("puk");
    const digits = input.value.replace(/\D/g, "").slice(0, 14);
    const parts = [digits.slice(0, 5), digits.slice(5, 9), digits.slice(9, 14)].filter(Boolean);
    const formatted = parts.join(" ");
    if (formatted !== input.value) input.value = formatted;
  }

  async function onLogout(mode) {
    let pukNext = mode === "lock";
    try {
      const result = await request("POST", "/api/v1/auth/logout", { mode });
      if (result && typeof result.puk_required_next === "boolean") pukNext = result.puk_required_next;
    } catch (error) {
      /* the session may already be gone: the UI leaves anyway */
    }
    if (mode === "lock") showLogin(t("locked"), "info", true);
    else showLogin(pukNext ? "" : t("loggedOut"), "info", pukNext);
  }

  // --- language --------------------------------------------------------------------------------
  function useLanguage(language) {
    const picker = $("lang-select");
    if (language && LANGUAGE_NAMES[language]) picker.value = language;
    const wanted = language && STRINGS[language] ? language : "en";
    if (wanted === lang) return;
    lang = wanted;
    try {
      locale = Intl.getCanonicalLocales(lang)[0];
    } catch (error) {
      locale = "en";
    }
    document.documentElement.lang = locale;
    applyStrings();
  }

  async function loadLanguages() {
    const picker = $("lang-select");
    try {
      const info = await request("GET", "/api/v1/language");
      picker.replaceChildren(
        ...info.languages.map((code) => el("option", { value: code, text: LANGUAGE_NAMES[code] || code }))
      );
      useLanguage(info.language);
    } catch (error) {
      picker.hidden = true;
    }
  }

  async function onLanguage() {
    const language = $("lang-select").value;
    try {
      // the browser's choice (login page included); the site default stays as it is
      await request("PUT", "/api/v1/language", { language });
      if (state.me) state.me.language = language;
      useLanguage(language);
    } catch (error) {
      /* keep the current language */
    }
  }

  // --- codes -----------------------------------------------------------------------------------
  function showCodes() {
    const me = state.me;
    if (!me) return;
    const roles = can("manage-codes") ? ["administrator", "greenUp", "installer", "user"] : [me.role];
    const select = $("codes-role");
    select.replaceChildren(...roles.map((role) => el("option", { value: role, text: t("role_" + role) })));
    select.value = me.role;
    select.disabled = roles.length < 2;
    updateCodesForm();
    setMessage($("codes-message"), "");
    showPage("codes");
  }

  function updateCodesForm() {
    // one's own codes need the current ones; another role's (manage-codes) do not
    $("codes-current").hidden = state.me && $("codes-role").value !== state.me.role;
  }

  async function onCodes(event) {
    event.preventDefault();
    const message = $("codes-message");
    const role = $("codes-role").value;
    const body = { pin: $("codes-pin").value.trim(), puk: $("codes-puk").value.replace(/\s+/g, "") };
    if (!/^\d{5}$/.test(body.pin)) return setMessage(message, t("pinFormat"), "error");
    if (!/^\d{14}$/.test(body.puk)) return setMessage(message, t("pukFormat"), "error");
    if (role === state.me.role) {
      body.current_pin = $("codes-current-pin").value.trim();
      body.current_puk = $("codes-current-puk").value.replace(/\s+/g, "");
    }
    const button = $("codes-submit");
    button.disabled = true;
    try {
      const result = await api("PUT", "/api/v1/auth/codes/" + encodeURIComponent(role), body);
      for (const id of ["codes-pin", "codes-puk", "codes-current-pin", "codes-current-puk"]) $(id).value = "";
      if (result.signed_out) showLogin(t("codesSignedOut"), "info", true);
      else setMessage(message, t("codesSaved", { n: result.sessions_revoked }), "info");
    } catch (error) {
      if (error instanceof ApiError && error.status === 401) return;
      setMessage(message, errorText(error), "error");
    } finally {
      button.disabled = false;
    }
  }

  // --- after login -----------------------------------------------------------------------------
  async function enterApp(known) {
    const me = known || (await api("GET", "/api/v1/me"));
    state.me = me;
    siteTimeZone = me.timezone || null;
    if (state.followToday) state.day = today();
    // Text, dates and numbers follow one language: the session's when STRINGS has it, else English.
    useLanguage(me.language);
    $("login-view").hidden = true;
    $("app-view").hidden = false;
    $("session-bar").hidden = false;
    document.body.classList.add("signed-in");
    $("role-badge").textContent = t("role_" + me.role);
    $("default-codes-banner").hidden = !me.default_codes_in_use;
    const pages = (me.pages || []).filter((page) => $("page-" + page));
    buildTabs(pages);
    const fromHash = location.hash.slice(1);
    showPage(pages.includes(fromHash) ? fromHash : pages[0]);
  }

  function can(permission) {
    const permissions = state.me && state.me.permissions;
    return !Array.isArray(permissions) || permissions.includes(permission);
  }

  function buildTabs(pages) {
    const nav = $("tabs");
    nav.replaceChildren(
      ...pages.map((page) =>
        el("button", {
          type: "button",
          class: "tab",
          role: "tab",
          id: "tab-" + page,
          "aria-controls": "page-" + page,
          "data-page": page,
          text: t("page_" + page),
          onclick: () => showPage(page),
        })
      )
    );
    nav.hidden = pages.length < 2;
  }

  const PAGES = {
    installation: { load: loadInstallation },
    consumption: { load: loadConsumption, shown: () => state.chart && state.chart.resize() },
    greenup: { load: loadGreenup },
    codes: { load: () => {} }, // opened from the session bar, not a tab
  };

  function showPage(page) {
    if (!page || !PAGES[page]) return;
    state.page = page;
    for (const name of Object.keys(PAGES)) $("page-" + name).hidden = name !== page;
    for (const tab of $("tabs").children) tab.setAttribute("aria-selected", String(tab.dataset.page === page));
    if (location.hash.slice(1) !== page) history.replaceState(null, "", "#" + page);
    if (PAGES[page].shown) PAGES[page].shown();
    PAGES[page].load();
    startRefresh();
  }

  function startRefresh() {
    stopRefresh();
    state.timer = setInterval(() => {
      if (document.hidden || !state.me || !state.page) return;
      PAGES[state.page].load(true);
    }, REFRESH_MS);
  }

  function stopRefresh() {
    clearInterval(state.timer);
    state.timer = null;
  }

  // --- consumption -----------------------------------------------------------------------------
  function disposeChart() {
    if (state.chart) {
      state.chart.dispose();
      state.chart = null;
    }
  }

  function ensureChart() {
    if (state.chart) return state.chart;
    if (!window.echarts) return null;
    state.chart = window.echarts.init($("day-chart"), null, { renderer: "canvas" });
    return state.chart;
  }

  function scaleFor(unit) {
    if (unit === "Wh") return { divide: 1000, unit: "kWh" };
    return { divide: 1, unit: unit || "" };
  }

  async function loadConsumption(periodic) {
    if (periodic) {
      if (!state.followToday) return; // a past day does not change
      state.day = today(); // follow midnight
    }
    const day = state.day;
    renderDayNav();
    const ticket = ++state.loads.consumption;
    const params = new URLSearchParams({ scope: "total-electricity", period: "day", date: day });
    try {
      const data = await api("GET", "/api/v1/consumption?" + params.toString());
      if (ticket !== state.loads.consumption || !state.me) return;
      renderConsumption(data);
      setMessage($("consumption-message"), data.buckets && data.buckets.length ? "" : t("noData"), "info");
    } catch (error) {
      if (ticket !== state.loads.consumption || !state.me) return;
      setMessage($("consumption-message"), t("loadFailed", { detail: errorText(error) }), "error");
    }
  }

  function renderDayNav() {
    const isToday = state.day === today();
    const date = parseDate(state.day);
    $("day-label").textContent = isToday
      ? t("today")
      : date.toLocaleDateString(locale, { weekday: "long", day: "numeric", month: "long" });
    $("day-sub").textContent = date.toLocaleDateString(locale, { day: "numeric", month: "long", year: "numeric" });
    $("day-next").disabled = state.day >= today();
    $("previous-label").textContent = isToday ? t("yesterdayTotal") : t("previousDayTotal");
  }

  function renderConsumption(data) {
    const total = data.total || {};
    const previous = (data.previous && data.previous.total) || {};
    const currency = total.currency || data.currency || "";
    const energy = (value, unit) => ((unit || data.unit) === "Wh" ? formatEnergy(value) : value + " " + (unit || ""));
    $("day-total").textContent = total.value === undefined || total.value === null ? "–" : energy(total.value, total.unit);
    $("day-cost").textContent = formatMoney(total.cost, currency);
    $("previous-total").textContent =
      previous.value === undefined || previous.value === null ? "–" : energy(previous.value, previous.unit);
    $("previous-cost").textContent = formatMoney(previous.cost, previous.currency || currency);

    const chart = ensureChart();
    if (!chart) {
      setMessage($("consumption-message"), t("chartUnavailable"), "error");
      return;
    }
    const buckets = Array.isArray(data.buckets) ? data.buckets : [];
    const scale = scaleFor(buckets.length ? buckets[0].unit || data.unit : data.unit);
    // "2024-05-01T13:00:00+02:00" -> "13:00" (start is already in the site's local time)
    const labels = buckets.map((bucket) => String(bucket.start).slice(11, 16));
    const values = buckets.map((bucket) =>
      bucket.value === null || bucket.value === undefined ? null : bucket.value / scale.divide
    );
    const digits = scale.unit === "kWh" ? 3 : 2;
    chart.setOption(
      {
        animation: false,
        grid: { left: 8, right: 12, top: 28, bottom: 8, containLabel: true },
        tooltip: {
          trigger: "axis",
          axisPointer: { type: "shadow" },
          confine: true,
          formatter: (items) => {
            const item = items[0];
            const bucket = buckets[item.dataIndex] || {};
            const value = item.value === null || item.value === undefined ? "–" : number(item.value, digits);
            const cost = formatMoney(bucket.cost, currency);
            const div = document.createElement("div");
            div.textContent = labels[item.dataIndex] + "  " + value + " " + scale.unit + (cost ? "  ·  " + cost : "");
            return div.innerHTML;
          },
        },
        xAxis: {
          type: "category",
          data: labels,
          axisTick: { alignWithLabel: true },
          axisLabel: { color: "#60707c", hideOverlap: true },
          axisLine: { lineStyle: { color: "#c7d0d8" } },
        },
        yAxis: {
          type: "value",
          name: scale.unit,
          nameTextStyle: { color: "#60707c", align: "left" },
          axisLabel: { color: "#60707c" },
          splitLine: { lineStyle: { color: "#e8edf1" } },
        },
        series: [
          {
            type: "bar",
            name: t("hourly"),
            data: values,
            barMaxWidth: 28,
            itemStyle: { color: "#f08a24", borderRadius: [3, 3, 0, 0] },
          },
        ],
      },
      { notMerge: true }
    );
    $("day-chart").setAttribute("aria-label", t("consumptionTitle") + ", " + t("hourly"));
  }

  function changeDay(delta) {
    const next = addDays(state.day, delta);
    if (next > today()) return;
    state.day = next;
    state.followToday = next === today();
    loadConsumption(false);
  }

  // --- installation ----------------------------------------------------------------------------
  function stateBadge(device) {
    const value = device.state || "unknown";
    return el("span", { class: "badge badge-" + value, text: t("state_" + value) });
  }

  function valueList(device) {
    const values = device.values || {};
    const states = device.states || {};
    const rows = [];
    const add = (label, text) => rows.push(el("div", {}, el("dt", { text: label }), el("dd", { text })));
    if ("power_active" in values) add(t("power"), formatPower(values.power_active));
    if ("energy_active_import" in values) add(t("energy"), formatEnergy(values.energy_active_import));
    if ("water_volume" in values) add(t("water"), formatVolume(values.water_volume));
    if ("gas_volume" in values) add(t("gas"), formatVolume(values.gas_volume));
    if (states.breaker) add(t("breaker"), states.breaker);
    if (states.charger) add(t("charger"), states.charger);
    return rows.length ? el("dl", { class: "device-values" }, rows) : null;
  }

  /** Modbus address as the original product shows it: address-position (pulse), address-side (EV). */
  function addressOf(device) {
    if (device.address === undefined || device.address === null) return "";
    let text = t("address", { address: device.address });
    if (device.position !== undefined && device.position !== null) text += "-" + device.position;
    if (device.side) text += "-" + device.side;
    return text;
  }

  function deviceMeta(device) {
    const parts = [device.id, addressOf(device), device.zone].filter(Boolean);
    const when = device.updated_at ? t("lastReading", { time: formatTime(device.updated_at) }) : t("neverRead");
    const lines = [el("div", { class: "device-meta", text: parts.join(" · ") + " — " + when })];
    if (device.reason && (device.state === "comm-error" || device.state === "fault")) {
      lines.push(el("div", { class: "device-meta device-reason", text: device.reason }));
    }
    return lines;
  }

  async function fetchDevices(page) {
    const ticket = ++state.loads[page];
    const data = await api("GET", "/api/v1/devices");
    if (ticket !== state.loads[page] || !state.me) return null;
    return Array.isArray(data && data.devices) ? data.devices : [];
  }

  async function loadInstallation() {
    const message = $("installation-message");
    try {
      const devices = await fetchDevices("installation");
      if (devices === null) return;
      $("device-list").replaceChildren(
        ...devices.map((device) => deviceCard(device, stateBadge(device), valueList(device)))
      );
      setMessage(message, devices.length ? "" : t("noDevices"), "info");
      $("installation-updated").textContent = t("updatedAt", { time: formatTime(new Date().toISOString()) });
    } catch (error) {
      if (state.me) setMessage(message, t("loadFailed", { detail: errorText(error) }), "error");
    }
  }

  // One device as a card: name and address line, its badges, then its body (values, actions …).
  function deviceCard(device, badges, body) {
    return el(
      "li",
      { class: "device", "data-device": device.id },
      el(
        "div",
        { class: "device-head" },
        el("div", {}, el("div", { class: "device-name", text: device.name || device.id }), deviceMeta(device)),
        badges
      ),
      body
    );
  }

  // --- green'up --------------------------------------------------------------------------------
  const isCharger = (device) => String(device.profile || "").startsWith("ev-station");

  function chargerItem(device) {
    const states = device.states || {};
    const values = device.values || {};
    const pending = state.commands[device.id] || {};
    const badges = el("div", { class: "badges" }, stateBadge(device));
    if (states.charger) badges.append(el("span", { class: "badge badge-" + states.charger, text: states.charger }));
    if (states.priority === "priority") badges.append(el("span", { class: "badge badge-charging", text: t("priority") }));
    const rows = [];
    const add = (label, text) => rows.push(el("div", {}, el("dt", { text: label }), el("dd", { text })));
    if (states.charge_process) add(t("chargeProcess"), states.charge_process);
    if ("power_active" in values) add(t("power"), formatPower(values.power_active));
    if ("energy_active_import" in values) add(t("energy"), formatEnergy(values.energy_active_import));
    const item = deviceCard(device, badges, rows.length ? el("dl", { class: "device-values" }, rows) : null);
    if (can("greenup-management") && can("command-devices")) {
      // the current charging process's value is shown pressed
      const button = (value, label) =>
        el("button", {
          type: "button",
          class: "btn btn-small" + (states.charge_process === value ? " btn-primary" : ""),
          "aria-pressed": String(states.charge_process === value),
          "data-action": "charge",
          "data-value": value,
          disabled: Boolean(pending.busy),
          text: label,
          onclick: () => sendCharge(device.id, value),
        });
      item.append(
        el(
          "div",
          { class: "device-actions" },
          button("start", t("start")),
          button("wait", t("wait")),
          el("span", { class: "message" + (pending.text ? " message-" + pending.kind : ""), text: pending.text || "" })
        )
      );
    }
    return item;
  }

  async function loadGreenup() {
    const message = $("greenup-message");
    try {
      const devices = await fetchDevices("greenup");
      if (devices === null) return;
      const chargers = devices.filter(isCharger);
      $("charger-list").replaceChildren(...chargers.map(chargerItem));
      setMessage(message, chargers.length ? "" : t("noChargers"), "info");
      $("greenup-updated").textContent = t("updatedAt", { time: formatTime(new Date().toISOString()) });
    } catch (error) {
      if (state.me) setMessage(message, t("loadFailed", { detail: errorText(error) }), "error");
    }
  }

  const sleep = (ms) => new Promise((resolve) => setTimeout(resolve, ms));

  async function sendCharge(device, value) {
    const note = (text, kind, busy) => {
      state.commands[device] = { text, kind, busy };
      if (state.page === "greenup") rerenderCharger(device);
    };
    note(t("commandSent"), "info", true);
    try {
      let command = await api("POST", "/api/v1/commands", { device, action: "charge", value });
      for (let i = 0; command.status === "requested" && i < COMMAND_POLL_MAX; i++) {
        await sleep(COMMAND_POLL_MS);
        if (!state.me) return;
        command = await api("GET", "/api/v1/commands/" + encodeURIComponent(command.id));
      }
      if (command.status === "completed") note(t("commandDone"), "ok", false);
      else if (command.status === "failed") note(t("commandFailed", { error: command.error || "" }), "error", false);
      else note(t("commandTimeout"), "info", false);
    } catch (error) {
      if (!state.me) return;
      note(t("commandFailed", { error: errorText(error) }), "error", false);
    }
    if (state.page === "greenup") loadGreenup(true);
  }

  function rerenderCharger(deviceId) {
    const list = $("charger-list");
    const current = list.querySelector('[data-device="' + CSS.escape(deviceId) + '"]');
    if (!current) return;
    // keep the last known readings; only the buttons and the note change
    const actions = current.querySelector(".device-actions");
    if (!actions) return;
    const pending = state.commands[deviceId] || {};
    for (const button of actions.querySelectorAll("button")) button.disabled = Boolean(pending.busy);
    const span = actions.querySelector(".message");
    span.textContent = pending.text || "";
    span.className = "message" + (pending.text ? " message-" + pending.kind : "");
  }

  // --- start -----------------------------------------------------------------------------------
  function wire() {
    applyStrings();
    $("login-form").addEventListener("submit", onLogin);
    $("pin").addEventListener("input", (event) => {
      const digits = event.target.value.replace(/\D/g, "").slice(0, 5);
      if (digits !== event.target.value) event.target.value = digits;
    });
    $("puk").addEventListener("input", formatPukInput);
    $("logout-btn").addEventListener("click", () => onLogout("logout"));
    $("lock-btn").addEventListener("click", () => onLogout("lock"));
    $("codes-btn").addEventListener("click", showCodes);
    $("codes-form").addEventListener("submit", onCodes);
    $("codes-role").addEventListener("change", updateCodesForm);
    $("lang-select").addEventListener("change", onLanguage);
    $("day-prev").addEventListener("click", () => changeDay(-1));
    $("day-next").addEventListener("click", () => changeDay(1));
    window.addEventListener("resize", () => state.chart && state.chart.resize());
    window.addEventListener("hashchange", () => {
      const page = location.hash.slice(1);
      if (state.me && (state.me.pages || []).includes(page) && page !== state.page) showPage(page);
    });
    document.addEventListener("visibilitychange", () => {
      if (!document.hidden && state.me && state.page) PAGES[state.page].load(true);
    });
  }

  async function boot() {
    wire();
    await loadLanguages();
    // A still-valid session (page reload) goes straight in; otherwise the login screen.
    try {
      const me = await request("GET", "/api/v1/me");
      await enterApp(me);
    } catch (error) {
      if (error instanceof ApiError && error.status === 401) showLogin("");
      else showLogin(error instanceof ApiError ? errorText(error) : "", "error");
    }
  }

  if (document.readyState === "loading") document.addEventListener("DOMContentLoaded", boot);
  else boot();
})();
