// Hover hints for the ELLA accordion's controls (the WebUI shows an element's title as a tooltip).
// The texts come from the argument schema (ella_ext/args.py), written by the accordion into the data-hints
// attribute of a hidden element, so a new control brings its hint with it.
(function () {
    function applyHints() {
        for (const tab of ["txt2img", "img2img"]) {
            const holder = document.querySelector(`#script_${tab}_ella_hints .ella-hints`);
            if (!holder || !holder.dataset.hints) {
                continue;
            }
            let hints;
            try {
                hints = JSON.parse(holder.dataset.hints);
            } catch (e) {
                continue;
            }
            for (const [key, text] of Object.entries(hints)) {
                const el = document.getElementById(`script_${tab}_ella_${key}`);
                if (el && !el.title) {
                    el.title = text;
                }
            }
        }
    }

    if (typeof onUiLoaded === "function") {
        onUiLoaded(applyHints);
    } else {
        document.addEventListener("DOMContentLoaded", applyHints);
    }
})();
