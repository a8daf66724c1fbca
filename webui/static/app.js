// The reference UI's only script. Copy buttons, and security keys (WebAuthn),
// which only a script can use; every other flow works without it.
"use strict";
document.documentElement.classList.add("js");
document.addEventListener("click", function (e) {
  var b = e.target.closest("[data-copy]");
  if (!b) return;
  var el = document.querySelector(b.getAttribute("data-copy"));
  if (!el || !navigator.clipboard) return;
  var text = Array.prototype.map.call(el.querySelectorAll("li"), function (li) { return li.textContent.trim(); }).join("\n") || el.textContent.trim();
  navigator.clipboard.writeText(text).then(function () {
    var was = b.textContent;
    b.textContent = "Copied";
    setTimeout(function () { b.textContent = was; }, 1500);
  });
});

// Security keys. A form marked data-webauthn asks the UI for the API's options
// (posting the form's CSRF token to data-options), hands them to the browser,
// puts the browser's answer in the form's "credential" field and submits the
// form: the server passes the answer to the API, which verifies it. Binary
// members travel as base64url in JSON, so they are converted both ways here
// (by hand: PublicKeyCredential.parseCreationOptionsFromJSON and toJSON are
// missing from older browsers).
(function () {
  function toBuf(s) {
    var b = atob(s.replace(/-/g, "+").replace(/_/g, "/") + "===".slice((s.length + 3) % 4));
    var out = new Uint8Array(b.length);
    for (var i = 0; i < b.length; i++) out[i] = b.charCodeAt(i);
    return out.buffer;
  }
  function toB64url(buf) {
    var bytes = new Uint8Array(buf), b = "";
    for (var i = 0; i < bytes.length; i++) b += String.fromCharCode(bytes[i]);
    return btoa(b).replace(/\+/g, "-").replace(/\//g, "_").replace(/=+$/, "");
  }
  function withIDs(list) {
    return (list || []).map(function (c) { return Object.assign({}, c, { id: toBuf(c.id) }); });
  }
  function creation(pk) {
    return Object.assign({}, pk, { challenge: toBuf(pk.challenge), user: Object.assign({}, pk.user, { id: toBuf(pk.user.id) }),
      excludeCredentials: withIDs(pk.excludeCredentials) });
  }
  function request(pk) {
    return Object.assign({}, pk, { challenge: toBuf(pk.challenge), allowCredentials: withIDs(pk.allowCredentials) });
  }
  // answer is the credential as JSON, the shape credential.toJSON() gives.
  function answer(c) {
    var r = c.response;
    var out = { id: c.id, rawId: toB64url(c.rawId), type: c.type, response: { clientDataJSON: toB64url(r.clientDataJSON) },
      clientExtensionResults: c.getClientExtensionResults ? c.getClientExtensionResults() : {} };
    if (c.authenticatorAttachment) out.authenticatorAttachment = c.authenticatorAttachment;
    if (r.attestationObject) {
      out.response.attestationObject = toB64url(r.attestationObject);
      if (r.getTransports) out.response.transports = r.getTransports();
    } else {
      out.response.authenticatorData = toB64url(r.authenticatorData);
      out.response.signature = toB64url(r.signature);
      if (r.userHandle) out.response.userHandle = toB64url(r.userHandle);
    }
    return out;
  }
  function why(err) {
    switch (err && err.name) {
      case "NotAllowedError": return "The security key did not answer: the request was cancelled or timed out. Nothing changed; try again.";
      case "InvalidStateError": return "This security key is already registered on your account.";
      case "SecurityError": return "This page's address is not one your organisation set up for security keys.";
      case "NotSupportedError": return "This security key cannot do what the site asks (for example, check a PIN).";
      case "Refused": return err.message;
    }
    return "The security key could not be used" + (err && err.message ? ": " + err.message : ".");
  }
  document.addEventListener("submit", function (e) {
    var form = e.target.closest("form[data-webauthn]");
    if (!form) return;
    e.preventDefault();
    var msg = form.querySelector(".webauthn-msg"), button = form.querySelector("button[type=submit]");
    function say(text) { msg.textContent = text; msg.hidden = false; button.disabled = false; }
    if (!window.PublicKeyCredential || !navigator.credentials) {
      say("This browser cannot use security keys (it has no WebAuthn). Use another method, or another browser.");
      return;
    }
    var register = form.getAttribute("data-webauthn") === "register";
    msg.hidden = true;
    button.disabled = true;
    fetch(form.getAttribute("data-options"), { method: "POST", credentials: "same-origin",
      body: new URLSearchParams({ csrf: form.elements.csrf.value }) })
      .then(function (res) {
        return res.json().catch(function () { return {}; }).then(function (body) {
          if (!res.ok || !body.options) {
            throw { name: "Refused", message: body.error || "The page has expired. Reload it and try again." };
          }
          var pk = body.options.publicKey;
          return register ? navigator.credentials.create({ publicKey: creation(pk) }) : navigator.credentials.get({ publicKey: request(pk) });
        });
      })
      .then(function (c) {
        if (!c) throw { name: "NotAllowedError" };
        form.elements.credential.value = JSON.stringify(answer(c));
        form.submit(); // submit() fires no submit event: the answer goes to the server
      })
      .catch(function (err) { say(why(err)); });
  });
})();
