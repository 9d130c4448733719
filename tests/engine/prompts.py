"""Chat prompts used across the engine tests."""

QUESTIONS = [
    "What is the capital of France?",
    "Write a haiku about the sea.",
    "Explain photosynthesis in two sentences.",
    "List three prime numbers greater than 10.",
    "Translate 'good morning' into Spanish.",
    "Why is the sky blue?",
    "Give me a short tip for writing clean Python code.",
    "What does a compiler do?",
    "Summarize the plot of Romeo and Juliet in one sentence.",
    "How many legs does a spider have?",
]
