// javascript/ella_token_counter.js on a fake gradio page (no browser): what it sends, when, and what it shows.
// Run by tests/test_token_counter_js.py, which passes (ELLA_TOKEN_CASES) the answers ELLA's real handler
// (ella_ext/webui/token_counter.py) gives for the texts typed here; the fake "gradio" answers with those.
"use strict";
const test = require("node:test");
const assert = require("node:assert");
const fs = require("node:fs");
const path = require("node:path");

const {setup, DEBOUNCE_MS, REQUEST_TIMEOUT_MS} = require(path.join(__dirname, "..", "..", "javascript", "ella_token_counter.js"));
const CASES = JSON.parse(fs.readFileSync(process.env.ELLA_TOKEN_CASES, "utf8"));

// --- a fake DOM: just what the script touches ---------------------------------------------------------
class El {
    constructor(tag) {
        this.tagName = tag;
        this.children = [];
        this.parentElement = null;
        this.listeners = {};
        this.style = {};
        this.value = "";
        this.checked = false;
        this.title = "";
        this.id = "";
        this.className = "";
        this.offsetWidth = 0;
        this._text = "";
        const el = this;
        this.classList = {
            toggle(name, on) {
                const names = new Set(el.className.split(" ").filter(Boolean));
                if (on) names.add(name); else names.delete(name);
                el.className = [...names].join(" ");
            },
            contains: (name) => el.className.split(" ").includes(name),
        };
    }
    get firstChild() { return this.children[0] || null; }
    get textContent() { return this._text + this.children.map((c) => c.textContent).join(""); }
    set textContent(text) { this._text = text; this.children = []; }
    appendChild(child) { child.parentElement = this; this.children.push(child); return child; }
    insertBefore(child, before) {
        child.parentElement = this;
        const at = this.children.indexOf(before);
        this.children.splice(at < 0 ? this.children.length : at, 0, child);
        return child;
    }
    addEventListener(type, fn) { (this.listeners[type] = this.listeners[type] || []).push(fn); }
    dispatch(type) { for (const fn of this.listeners[type] || []) fn({type, target: this}); }
    click() { this.dispatch("click"); }
    querySelector(selector) {
        for (const child of this.children) {
            if ((selector === "textarea" && child.tagName === "textarea") ||
                (selector.startsWith(".") && child.classList.contains(selector.slice(1)))) return child;
            const inner = child.querySelector(selector);
            if (inner) return inner;
        }
        return null;
    }
}

class Page {
    constructor({hires = true} = {}) {
        this.byId = {};
        this.observers = [];
        this.timers = new Map();
        this.now = 0;
        this.nextTimer = 1;
        this.sent = [];
        this.answerQueue = []; // requests the fake server holds until answer() is called
        this.autoAnswer = true;
        const row = this.el("div", "prompt_row");
        this.prompt = this.box(row, "txt2img_prompt");
        this.clipCounter = this.el("div", "txt2img_token_counter");
        this.clipCounter.offsetWidth = 52;
        row.appendChild(this.clipCounter);
        if (hires) this.hires = this.box(this.el("div", "hires_row"), "hires_prompt");
        this.clip = this.box(this.el("div", "clip_row"), "script_txt2img_ella_clip_prompt");
        this.enabled = this.input("script_txt2img_ella_enabled-checkbox");
        this.steps = this.input("txt2img_steps");
        this.steps.value = "20";
        this.hiresSteps = this.input("txt2img_hires_steps");
        this.hiresSteps.value = "0";
        this.length = this.el("div", "script_txt2img_ella_length");
        this.request = this.box(this.el("div"), "script_txt2img_ella_tokens_request");
        this.button = this.el("button", "script_txt2img_ella_tokens_button");
        this.result = this.el("div", "script_txt2img_ella_tokens_result");
        this.button.addEventListener("click", () => this.serve());
        this.env = {
            setTimeout: (fn, ms) => { const id = this.nextTimer++; this.timers.set(id, {fn, at: this.now + ms}); return id; },
            clearTimeout: (id) => this.timers.delete(id),
            MutationObserver: class {
                constructor(fn) { this.fn = fn; }
                observe(target) { page.observers.push({target, fn: this.fn}); }
            },
            updateInput: (el) => el.dispatch("input"),
        };
        const page = this;
    }
    el(tag, id) { const e = new El(tag); if (id) { e.id = id; this.byId["#" + id] = e; } return e; }
    box(parent, id) {
        const box = this.el("div", id);
        parent.appendChild(box);
        const label = box.appendChild(new El("label"));
        box.textarea = label.appendChild(new El("textarea"));
        return box;
    }
    input(id) { const wrap = this.el("div", id); const input = wrap.appendChild(new El("input")); this.byId[`#${id} input`] = input; return input; }
    querySelector(selector) {
        if (this.byId[selector]) return this.byId[selector];
        const m = selector.match(/^(#\S+) textarea$/);
        return m && this.byId[m[1]] ? this.byId[m[1]].textarea : null;
    }
    createElement(tag) { return new El(tag); }
    // gradio: the click sends the request box's value; the answer replaces the result HTML
    serve() {
        const request = JSON.parse(this.request.textarea.value);
        this.sent.push(request);
        if (this.autoAnswer) this.answer(request); else this.answerQueue.push(request);
    }
    answer(request) {
        const found = CASES.find((c) => c.field === request.field && c.text === request.text);
        assert.ok(found, `no answer prepared for ${JSON.stringify(request)}`);
        const body = {...found.answer, id: request.id, field: request.field};
        this.result.children = [];
        const holder = this.result.appendChild(new El("div"));
        holder.className = "ella-tokens-result";
        holder.textContent = JSON.stringify(body);
        for (const o of this.observers) if (o.target === this.result) o.fn([]);
    }
    type(box, text) { box.textarea.value = text; box.textarea.dispatch("input"); }
    tick(ms) {
        const until = this.now + ms;
        for (;;) {
            const due = [...this.timers.entries()].filter(([, t]) => t.at <= until).sort((a, b) => a[1].at - b[1].at)[0];
            if (!due) break;
            this.timers.delete(due[0]);
            this.now = due[1].at;
            due[1].fn();
        }
        this.now = until;
    }
    counter(field) { return this.querySelectorAll(`ella_txt2img_${field}_token_counter`); }
    querySelectorAll(id) {
        const walk = (el) => (el.id === id ? el : el.children.map(walk).find(Boolean));
        return Object.values(this.byId).map(walk).find(Boolean) || null;
    }
    turn(on) { this.enabled.checked = on; this.enabled.dispatch("input"); }
}

function answerFor(field, text) {
    return CASES.find((c) => c.field === field && c.text === text).answer;
}

// --- the behaviour ------------------------------------------------------------------------------------
test("ELLA off: typing sets no timer, sends nothing, shows nothing", () => {
    const page = new Page();
    setup(page, page.env);
    for (const ch of "a red cube") page.type(page.prompt, page.prompt.textarea.value + ch);
    assert.strictEqual(page.timers.size, 0);
    page.tick(10 * DEBOUNCE_MS);
    assert.deepStrictEqual(page.sent, []);
    assert.strictEqual(page.request.textarea.value, "");
    assert.strictEqual(page.counter("prompt"), null);
});

test("typing is debounced: one request after the pause, the count beside the CLIP counter", () => {
    const page = new Page();
    setup(page, page.env);
    page.turn(true);
    page.tick(DEBOUNCE_MS);
    const text = "a red cube on a glossy table";
    for (let i = 1; i <= text.length; i++) {
        page.type(page.prompt, text.slice(0, i));
        page.tick(DEBOUNCE_MS / 5);
    }
    const before = page.sent.length;
    page.tick(DEBOUNCE_MS);
    assert.strictEqual(page.sent.length - before, 1, "one request for the whole burst of typing");
    const request = page.sent[page.sent.length - 1];
    assert.deepStrictEqual({field: request.field, text: request.text, steps: request.steps}, {field: "prompt", text, steps: 20});
    const counter = page.counter("prompt");
    const expected = answerFor("prompt", text);
    assert.strictEqual(counter.firstChild.textContent, expected.label);
    assert.match(expected.label, /^T5 \d+\/128$/);
    assert.strictEqual(counter.style.display, "block");
    assert.ok(!counter.classList.contains("ella-token-counter-over"));
    assert.strictEqual(counter.title, expected.title);
    assert.strictEqual(counter.parentElement.id, "prompt_row", "placed where the WebUI puts its counter");
    assert.strictEqual(counter.style.right, "calc(1em + 60px)", "left of the WebUI's CLIP counter");
});

test("a prompt ELLA would cut is red, with the reason on hover", () => {
    const page = new Page();
    setup(page, page.env);
    page.turn(true);
    const long = CASES.find((c) => c.name === "long").text;
    page.type(page.prompt, long);
    page.tick(DEBOUNCE_MS);
    const counter = page.counter("prompt");
    assert.ok(counter.classList.contains("ella-token-counter-over"));
    assert.match(counter.title, /cuts every text at 128/);
    page.type(page.prompt, "a red cube on a glossy table");
    page.tick(DEBOUNCE_MS);
    assert.ok(!counter.classList.contains("ella-token-counter-over"), "back to normal when shortened");
});

test("one request at a time per tab: the hires and CLIP boxes wait for the prompt's answer", () => {
    const page = new Page();
    setup(page, page.env);
    page.turn(true);
    page.tick(DEBOUNCE_MS);
    page.autoAnswer = false;
    page.sent = [];
    page.type(page.prompt, "a red cube on a glossy table");
    page.type(page.hires, "a red cube, [sharp:very detailed, crisp edges:25]");
    page.type(page.clip, "sks style, (masterpiece:1.3) <lora:ink:0.8>");
    page.tick(DEBOUNCE_MS);
    assert.deepStrictEqual(page.sent.map((r) => r.field), ["prompt"]);
    page.answer(page.answerQueue.shift());
    assert.deepStrictEqual(page.sent.map((r) => r.field), ["prompt", "hires"]);
    assert.strictEqual(page.sent[1].hires_steps, 20, "hires steps 0 means the first pass's steps");
    page.answer(page.answerQueue.shift());
    page.answer(page.answerQueue.shift());
    assert.deepStrictEqual(page.sent.map((r) => r.field), ["prompt", "hires", "clip"]);
    assert.strictEqual(page.counter("hires").firstChild.textContent, answerFor("hires", page.sent[1].text).label);
    assert.strictEqual(page.counter("clip").firstChild.textContent, "CLIP 4/75");
    assert.strictEqual(page.counter("hires").style.right, "1em");
});

test("a lost answer does not block the counter", () => {
    const page = new Page();
    setup(page, page.env);
    page.turn(true);
    page.tick(DEBOUNCE_MS);
    page.autoAnswer = false;
    page.sent = [];
    page.type(page.prompt, "a red cube on a glossy table");
    page.tick(DEBOUNCE_MS);
    page.type(page.clip, "sks style, (masterpiece:1.3) <lora:ink:0.8>");
    page.tick(DEBOUNCE_MS);
    assert.strictEqual(page.sent.length, 1);
    page.tick(REQUEST_TIMEOUT_MS);
    assert.deepStrictEqual(page.sent.map((r) => r.field), ["prompt", "clip"]);
    page.answer(page.answerQueue.shift()); // the late answer of the first request: ignored
    assert.strictEqual(page.counter("prompt"), null);
    page.answer(page.answerQueue.shift());
    assert.strictEqual(page.counter("clip").firstChild.textContent, "CLIP 4/75");
});

test("turning ELLA on counts what is there; off hides the counters and stops counting", () => {
    const page = new Page();
    setup(page, page.env);
    page.prompt.textarea.value = "a red cube on a glossy table";
    page.turn(true);
    page.tick(DEBOUNCE_MS);
    assert.deepStrictEqual(page.sent.map((r) => r.field), ["prompt"], "empty hires/CLIP boxes are not counted");
    assert.strictEqual(page.counter("prompt").style.display, "block");
    page.turn(false);
    assert.strictEqual(page.counter("prompt").style.display, "none");
    page.type(page.prompt, "a blue cube");
    page.tick(10 * DEBOUNCE_MS);
    assert.strictEqual(page.sent.length, 1);
    assert.strictEqual(page.timers.size, 0);
});

test("a changed length setting recounts; an error shows 'T5 ?' with the message", () => {
    const page = new Page();
    setup(page, page.env);
    page.prompt.textarea.value = "a red cube on a glossy table";
    page.turn(true);
    page.tick(DEBOUNCE_MS);
    page.length.dispatch("change");
    page.tick(DEBOUNCE_MS);
    assert.strictEqual(page.sent.length, 2);
    page.type(page.prompt, "broken");
    page.tick(DEBOUNCE_MS);
    const counter = page.counter("prompt");
    assert.strictEqual(counter.firstChild.textContent, "T5 ?");
    assert.match(counter.title, /was not found/);
});

test("img2img has no hires box; a page without ELLA's accordion gets nothing", () => {
    const page = new Page({hires: false});
    const counters = setup(page, page.env);
    assert.deepStrictEqual(counters.map((c) => Object.keys(c.fields)), [["prompt", "clip"]]);
    const bare = new Page();
    delete bare.byId["#script_txt2img_ella_tokens_button"];
    assert.deepStrictEqual(setup(bare, bare.env), []);
});
