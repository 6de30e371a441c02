// Sightline pages: the shared part every page loads first (header, sign-in/out, API calls,
// formatting). Data comes from the API with the bearer token kept in sessionStorage; every
// value is written with textContent (never innerHTML), so nothing a PACS sends can run as
// script. No inline script or style anywhere: the Content Security Policy forbids them.
"use strict";
window.Sightline = (() => {
  const TOKEN_KEY = "sightline.token";
  const PRIORITY = ["routine", "urgent", "stat"]; // service/ingest ClinicalPriority.rank: 0, 1, 2
  const token = () => sessionStorage.getItem(TOKEN_KEY);
  let onSignedIn = null;

  function el(tag, text, cls) {
    const node = document.createElement(tag);
    if (text !== undefined && text !== null) node.textContent = String(text);
    if (cls) node.className = cls;
    return node;
  }

  // The header's sign-in form and sign-out button; made here when a page's markup lacks them.
  function headerControls() {
    let header = document.querySelector("header");
    if (!header) {
      header = el("header");
      document.body.prepend(header);
    }
    let form = document.getElementById("login");
    if (!form) {
      form = el("form");
      form.id = "login";
      const input = el("input");
      Object.assign(input, { id: "token", type: "password", placeholder: "token", autocomplete: "off" });
      input.setAttribute("aria-label", "token");
      form.append(input, el("button", "Sign in"));
      header.append(form);
    }
    let signOutButton = document.getElementById("signout");
    if (!signOutButton) {
      signOutButton = el("button", "Sign out");
      Object.assign(signOutButton, { id: "signout", type: "button" });
      header.append(signOutButton);
    }
    return { form, signOutButton };
  }

  function showSignedIn(signedIn, message) {
    const { form, signOutButton } = headerControls();
    form.hidden = signedIn;
    signOutButton.hidden = !signedIn;
    const notice = document.getElementById("login-message");
    if (notice) notice.textContent = message || "";
    if (!signedIn) document.getElementById("token").focus();
    // The form is hidden now: do not leave focus on its button, where a dialog closing later
    // would hand it back to a hidden element and keyboard shortcuts would land nowhere.
    else if (form.contains(document.activeElement)) document.activeElement.blur();
  }

  /** Runs onReady once a token is there: now, or after the sign-in form is sent. */
  function requireLogin(onReady) {
    onSignedIn = onReady;
    if (token()) {
      showSignedIn(true);
      onReady();
    } else {
      showSignedIn(false);
    }
  }

  /** Forget the token and go back to the sign-in form; reloading drops every shown value. */
  function signOut() {
    sessionStorage.removeItem(TOKEN_KEY);
    location.reload();
  }

  function installHeader() {
    const { form, signOutButton } = headerControls();
    if (!onSignedIn) { // a page without requireLogin (the docs): offer sign-out only
      form.hidden = true;
      signOutButton.hidden = !token();
    }
    form.addEventListener("submit", (event) => {
      event.preventDefault();
      const input = document.getElementById("token");
      const value = input.value.trim();
      if (!value) return;
      sessionStorage.setItem(TOKEN_KEY, value);
      input.value = "";
      showSignedIn(true);
      if (onSignedIn) onSignedIn();
    });
    signOutButton.addEventListener("click", signOut);
  }

  class ApiError extends Error {
    constructor(status, code, message) {
      super(code ? `${code}: ${message}` : message);
      Object.assign(this, { status, code });
    }
  }

  /** fetch with the bearer token; throws ApiError unless 2xx or 304; a 401 shows the sign-in form. */
  async function api(path, options = {}) {
    const headers = new Headers(options.headers || {});
    if (token()) headers.set("Authorization", `Bearer ${token()}`);
    const response = await fetch(path, { ...options, headers });
    if (response.ok || response.status === 304) return response;
    const body = await response.json().catch(() => ({}));
    const error = body.error || {};
    if (response.status === 401) {
      sessionStorage.removeItem(TOKEN_KEY);
      showSignedIn(false, "Your token was not accepted: sign in again.");
    }
    throw new ApiError(response.status, error.code, error.message || response.statusText);
  }

  async function imageUrl(path) {
    const blob = await (await api(path)).blob();
    return URL.createObjectURL(blob);
  }

  const fmtScore = (s) => (s === null || s === undefined ? "—" : s.toFixed(3));
  const fmtPriority = (rank) => PRIORITY[rank] ?? (rank === null || rank === undefined ? "—" : `priority ${rank}`);

  /** A DICOM person name (PS3.5 6.2: family^given^middle^prefix^suffix) as "Family, Given Middle". */
  function fmtPersonName(name) {
    if (!name) return null;
    const [family = "", given = "", middle = "", prefix = "", suffix = ""] = name.split("=")[0].split("^");
    const first = [prefix, given, middle].filter(Boolean).join(" ");
    return [family, first].filter(Boolean).join(", ") + (suffix ? ` ${suffix}` : "");
  }

  /** "just now", "12 min", "3 h 5 min", "2 d 4 h": how long since an ISO time. */
  function fmtWaiting(iso, now = Date.now()) {
    const minutes = Math.max(0, Math.floor((now - new Date(iso).getTime()) / 60000));
    if (minutes < 1) return "just now";
    if (minutes < 60) return `${minutes} min`;
    const hours = Math.floor(minutes / 60);
    if (hours < 48) return minutes % 60 ? `${hours} h ${minutes % 60} min` : `${hours} h`;
    return `${Math.floor(hours / 24)} d ${hours % 24} h`;
  }

  // Pages load this script at the end of <body>, so the header is there already.
  if (document.body) installHeader();
  else document.addEventListener("DOMContentLoaded", installHeader);

  return {
    api, ApiError, requireLogin, signOut, el, imageUrl, token, fmtScore, fmtPriority, fmtWaiting, fmtPersonName,
  };
})();
