"""The study: experiments and profiles (every setting of every run), the runner, the results store and its
records, and the statistics and reports the chapters draw from them. It builds on the LoRA core above."""
