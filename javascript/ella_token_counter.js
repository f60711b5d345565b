// ELLA's T5 token counter beside the WebUI's CLIP counter: "T5 43/128", red where ELLA would cut the prompt.
// Also on the hires prompt, and a CLIP count on ELLA's CLIP prompt. Costs nothing while ELLA is off: every
// listener first reads the tab's ELLA checkbox and returns. Counting asks the server through the accordion's
// hidden gradio button (ella_ext/webui/token_counter.py), as the WebUI's own counter does, at most one request
// per tab at a time and only after typing pauses; the server runs the T5 tokenizer, never T5.
(function (root) {
    const DEBOUNCE_MS = 500;
    const REQUEST_TIMEOUT_MS = 10000;
    const TABS = ["txt2img", "img2img"];
    // field -> the prompt box whose textarea it counts; the hires prompt exists on txt2img only
    const FIELDS = {
        prompt: (tab) => `#${tab}_prompt`,
        hires: (tab) => (tab === "txt2img" ? "#hires_prompt" : null),
        clip: (tab) => `#script_${tab}_ella_clip_prompt`,
    };

    function ids(tab) {
        const base = `script_${tab}_ella`;
        return {
            enabled: `#${base}_enabled-checkbox input`,
            request: `#${base}_tokens_request textarea`,
            button: `#${base}_tokens_button`,
            result: `#${base}_tokens_result`,
            settings: [`#${base}_t5`, `#${base}_length`, `#${base}_long_prompts`, `#${tab}_steps`, `#txt2img_hires_steps`],
            steps: `#${tab}_steps input`,
            hiresSteps: "#txt2img_hires_steps input",
            clipCounter: `#${tab}_token_counter`,
        };
    }

    function numberIn(doc, selector) {
        const input = doc.querySelector(selector);
        const value = input ? parseInt(input.value, 10) : NaN;
        return Number.isFinite(value) && value > 0 ? value : null;
    }

    // One tab's counters and its one-at-a-time request queue.
    class TabCounter {
        constructor(doc, tab, env) {
            this.doc = doc;
            this.tab = tab;
            this.env = env;
            this.ids = ids(tab);
            this.enabled = doc.querySelector(this.ids.enabled);
            this.request = doc.querySelector(this.ids.request);
            this.button = doc.querySelector(this.ids.button);
            this.result = doc.querySelector(this.ids.result);
            this.fields = {};
            this.timers = {};
            this.pending = [];
            this.inFlight = null;
            this.nextId = 1;
        }

        get ready() {
            return Boolean(this.enabled && this.request && this.button && this.result);
        }

        get on() {
            return Boolean(this.enabled && this.enabled.checked);
        }

        setup() {
            for (const [field, selector] of Object.entries(FIELDS)) {
                const sel = selector(this.tab);
                const box = sel && this.doc.querySelector(sel);
                const textarea = box && box.querySelector("textarea");
                if (!textarea) continue;
                this.fields[field] = {box, textarea, counter: null};
                textarea.addEventListener("input", () => this.edited(field));
            }
            const toggled = () => (this.on ? this.recountAll() : this.hideAll());
            this.enabled.addEventListener("input", toggled);
            this.enabled.addEventListener("change", toggled);
            for (const selector of this.ids.settings) {
                const el = this.doc.querySelector(selector);
                if (el) el.addEventListener("change", () => this.on && this.recountAll());
            }
            new this.env.MutationObserver(() => this.answered()).observe(this.result, {
                childList: true, subtree: true, characterData: true,
            });
            if (this.on) this.recountAll();
        }

        edited(field) {
            if (!this.on) return; // ELLA off: not even a timer
            this.env.clearTimeout(this.timers[field]);
            this.timers[field] = this.env.setTimeout(() => this.queue(field), DEBOUNCE_MS);
        }

        recountAll() {
            for (const field of Object.keys(this.fields)) this.edited(field);
        }

        hideAll() {
            for (const field of Object.keys(this.fields)) {
                this.env.clearTimeout(this.timers[field]);
                const counter = this.fields[field].counter;
                if (counter) counter.style.display = "none";
            }
            this.pending = [];
        }

        queue(field) {
            if (!this.on) return;
            const text = this.fields[field].textarea.value;
            if (!text.trim()) { // nothing to count (an empty hires or CLIP prompt means "the prompt")
                this.show(field, null);
                return;
            }
            if (!this.pending.includes(field)) this.pending.push(field);
            this.sendNext();
        }

        sendNext() {
            if (this.inFlight !== null || !this.pending.length || !this.on) return;
            const field = this.pending.shift();
            const id = this.nextId++;
            const steps = numberIn(this.doc, this.ids.steps) || 20;
            const request = {id, field, text: this.fields[field].textarea.value, steps};
            if (field === "hires") request.hires_steps = numberIn(this.doc, this.ids.hiresSteps) || steps;
            this.inFlight = id;
            this.expiry = this.env.setTimeout(() => { // a lost answer never blocks the counter
                if (this.inFlight === id) {
                    this.inFlight = null;
                    this.sendNext();
                }
            }, REQUEST_TIMEOUT_MS);
            this.request.value = JSON.stringify(request);
            this.env.updateInput(this.request);
            this.button.click();
        }

        answered() {
            const holder = this.result.querySelector(".ella-tokens-result");
            if (!holder) return;
            let answer;
            try {
                answer = JSON.parse(holder.textContent);
            } catch (e) {
                return;
            }
            if (answer.id !== this.inFlight) return; // an old answer, already timed out
            this.env.clearTimeout(this.expiry);
            this.inFlight = null;
            if (this.on && this.fields[answer.field] && !this.pending.includes(answer.field)) this.show(answer.field, answer);
            this.sendNext();
        }

        counterFor(field) {
            const entry = this.fields[field];
            if (!entry.counter) {
                // gradioApp() may be the <gradio-app> element, which makes no elements: its document does
                const factory = this.doc.createElement ? this.doc : this.doc.ownerDocument;
                const counter = factory.createElement("div");
                counter.className = "ella-token-counter";
                counter.id = `ella_${this.tab}_${field}_token_counter`;
                counter.appendChild(factory.createElement("span"));
                // where the WebUI puts its own counter: before the prompt box, in its (relative) parent
                const parent = entry.box.parentElement;
                parent.insertBefore(counter, entry.box);
                parent.style.position = "relative";
                entry.counter = counter;
            }
            return entry.counter;
        }

        show(field, answer) {
            if (!answer) {
                if (this.fields[field].counter) this.fields[field].counter.style.display = "none";
                return;
            }
            const counter = this.counterFor(field);
            const span = counter.firstChild;
            span.textContent = answer.error ? "T5 ?" : answer.label;
            counter.title = answer.error || answer.title || "";
            counter.classList.toggle("ella-token-counter-over", Boolean(answer.truncated));
            counter.classList.toggle("ella-token-counter-error", Boolean(answer.error));
            counter.style.display = "block";
            // the main prompt box: left of the WebUI's own counter, which sits at the box's top right
            const clip = field === "prompt" ? this.doc.querySelector(this.ids.clipCounter) : null;
            const clipWidth = clip && clip.style.display !== "none" ? clip.offsetWidth || 0 : 0;
            counter.style.right = clipWidth ? `calc(1em + ${clipWidth + 8}px)` : "1em";
        }
    }

    function setup(doc, env) {
        const counters = [];
        for (const tab of TABS) {
            const counter = new TabCounter(doc, tab, env);
            if (!counter.ready) continue;
            counter.setup();
            counters.push(counter);
        }
        return counters;
    }

    function browserEnv() {
        return {
            setTimeout: root.setTimeout.bind(root),
            clearTimeout: root.clearTimeout.bind(root),
            MutationObserver: root.MutationObserver,
            updateInput: typeof root.updateInput === "function" ? root.updateInput : (el) => {
                el.dispatchEvent(new Event("input", {bubbles: true}));
            },
        };
    }

    if (typeof module !== "undefined" && module.exports) {
        module.exports = {setup, DEBOUNCE_MS, REQUEST_TIMEOUT_MS};
    } else if (typeof onUiLoaded === "function") {
        onUiLoaded(() => setup(typeof gradioApp === "function" ? gradioApp() : document, browserEnv()));
    }
})(typeof window !== "undefined" ? window : globalThis);
