// Hover hints for the ELLA accordion's controls (the WebUI shows an element's title as a tooltip).
(function () {
    const hints = {
        enabled: "Replace CLIP's text conditioning with ELLA: flan-t5-xl reads the prompt, the timestep-aware connector turns it into 64 tokens at every step.",
        model: "ELLA connector weights (*.safetensors in models/ELLA). Press the refresh button after adding files.",
        t5: "flan-t5-xl encoder folder (in models/ELLA/t5): config.json, tokenizer and *.safetensors weights.",
        length: "Flexible: the prompt's own length, as the ELLA demo. Fixed 128: padded to 128 tokens, as the paper's fixed mode.",
        mode: "ELLA only is the paper's setting. ELLA + CLIP appends CLIP's tokens, keeping trigger words, embeddings and a fine-tune's style.",
        negative: "Encode the negative prompt with ELLA (default) or leave it to CLIP.",
        start: "Fraction of the sampling steps where ELLA starts; before it, CLIP's conditioning is used.",
        end: "Fraction of the sampling steps where ELLA stops; after it, CLIP's conditioning is used.",
        emphasis: "(word:1.3) and [word]: Original scales the word's T5 features and restores the mean, like the WebUI does for CLIP; No norm skips the mean; Ignore drops the weights.",
        long_prompts: "ELLA was trained on prompts of up to 128 T5 tokens. Truncate cuts longer prompts there (and says so in the infotext); Keep passes them whole.",
    };

    function applyHints() {
        for (const tab of ["txt2img", "img2img"]) {
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
