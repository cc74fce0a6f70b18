"""Fifth round of user-style models for ``usage_scan.py`` (2026-12-07, third session): models as the
``pytorch/examples`` repository and the PyTorch tutorials write them, from their descriptions. The word
language model as an LSTM (sequence-first token ids, a carried hidden state, the decoder tied to the
embedding) and as a Transformer (its causal mask sized by ``len(src)``, a positional table sliced by
``x.size(0)``), time-sequence prediction (an ``LSTMCell`` stepped over ``input.split(1, dim=1)`` and
then fed its own outputs), a seq2seq GRU decoder with additive attention that feeds back its own
``topk`` choice, a graph convolutional network on a sparse adjacency (``torch.spmm``), and an
actor-critic policy (a shared body, a softmax policy and a value head).

Each entry: ``name -> (what it exercises, builder returning (model, make(batch, generator)))``,
the shape of ``usage_scan.CASES``.
"""

from __future__ import annotations

import math

import torch
import torch.nn.functional as F
from torch import nn


class WordLM(nn.Module):
    """word_language_model's RNNModel: ids ``[T, N]``, ``(h, c)`` carried in and returned, the decoder
    tied to the encoder, dropout (inactive in eval)."""

    def __init__(self, tokens: int = 50, dim: int = 16, layers: int = 2) -> None:
        super().__init__()
        self.drop, self.encoder = nn.Dropout(0.2), nn.Embedding(tokens, dim)
        self.rnn = nn.LSTM(dim, dim, layers, dropout=0.2)
        self.decoder = nn.Linear(dim, tokens)
        self.decoder.weight = self.encoder.weight
        self.tokens = tokens

    def forward(self, input, hidden):
        output, hidden = self.rnn(self.drop(self.encoder(input)), hidden)
        decoded = self.decoder(self.drop(output)).view(-1, self.tokens)
        return F.log_softmax(decoded, dim=1), hidden


def _word_lm_inputs(n: int, g: torch.Generator):
    return torch.randint(0, 50, (12, n), generator=g), (torch.randn(2, n, 16, generator=g), torch.randn(2, n, 16, generator=g))


class PositionalEncoding(nn.Module):
    def __init__(self, dim: int, max_len: int = 64) -> None:
        super().__init__()
        position = torch.arange(max_len).unsqueeze(1).float()
        div = torch.exp(torch.arange(0, dim, 2).float() * (-math.log(10000.0) / dim))
        pe = torch.zeros(max_len, dim)
        pe[:, 0::2], pe[:, 1::2] = torch.sin(position * div), torch.cos(position * div)
        self.register_buffer("pe", pe.unsqueeze(1))  # [max_len, 1, dim]: sequence-first

    def forward(self, x):
        return x + self.pe[:x.size(0), :]


class WordTransformer(nn.Module):
    """word_language_model's TransformerModel: sequence-first ids, ``generate_square_subsequent_mask(len(src))``."""

    def __init__(self, tokens: int = 50, dim: int = 16) -> None:
        super().__init__()
        self.pos, self.embed = PositionalEncoding(dim), nn.Embedding(tokens, dim)
        self.encoder = nn.TransformerEncoder(nn.TransformerEncoderLayer(dim, 2, 32, 0.1), 2, enable_nested_tensor=False)
        self.decoder, self.dim = nn.Linear(dim, tokens), dim

    def forward(self, src):
        mask = nn.Transformer.generate_square_subsequent_mask(len(src))
        src = self.pos(self.embed(src) * math.sqrt(self.dim))
        return F.log_softmax(self.decoder(self.encoder(src, mask)), dim=-1)


class Sequence(nn.Module):
    """time_sequence_prediction: two ``LSTMCell`` stepped over ``input.split(1, dim=1)``, then over
    their own predictions for ``future`` more steps."""

    def __init__(self, hidden: int = 16) -> None:
        super().__init__()
        self.lstm1, self.lstm2, self.linear = nn.LSTMCell(1, hidden), nn.LSTMCell(hidden, hidden), nn.Linear(hidden, 1)
        self.hidden = hidden

    def forward(self, input, future: int = 3):
        outputs = []
        h_t = torch.zeros(input.size(0), self.hidden, dtype=input.dtype)
        c_t, h_t2, c_t2 = torch.zeros_like(h_t), torch.zeros_like(h_t), torch.zeros_like(h_t)
        for input_t in input.split(1, dim=1):
            h_t, c_t = self.lstm1(input_t, (h_t, c_t))
            h_t2, c_t2 = self.lstm2(h_t, (h_t2, c_t2))
            output = self.linear(h_t2)
            outputs += [output]
        for _ in range(future):
            h_t, c_t = self.lstm1(output, (h_t, c_t))
            h_t2, c_t2 = self.lstm2(h_t, (h_t2, c_t2))
            output = self.linear(h_t2)
            outputs += [output]
        return torch.cat(outputs, dim=1)


class AttnDecoder(nn.Module):
    """The seq2seq tutorial's attention decoder: a GRU encoder; the decoder attends (Bahdanau) over the
    encoder outputs and feeds back its own ``topk(1)`` token, detached, for a fixed number of steps."""

    def __init__(self, vocab: int = 30, dim: int = 16, steps: int = 5) -> None:
        super().__init__()
        self.src_embed, self.encoder = nn.Embedding(vocab, dim), nn.GRU(dim, dim, batch_first=True)
        self.embed, self.gru, self.out = nn.Embedding(vocab, dim), nn.GRU(2 * dim, dim, batch_first=True), nn.Linear(dim, vocab)
        self.Wa, self.Ua, self.Va = nn.Linear(dim, dim), nn.Linear(dim, dim), nn.Linear(dim, 1)
        self.steps = steps

    def forward(self, src):
        enc, hidden = self.encoder(self.src_embed(src))
        token = torch.zeros(src.size(0), 1, dtype=torch.long)
        outputs = []
        for _ in range(self.steps):
            query = hidden.permute(1, 0, 2)
            scores = self.Va(torch.tanh(self.Wa(query) + self.Ua(enc))).squeeze(2).unsqueeze(1)
            context = torch.bmm(F.softmax(scores, dim=-1), enc)
            out, hidden = self.gru(torch.cat((self.embed(token), context), dim=2), hidden)
            out = self.out(out)
            outputs.append(out)
            _, top = out.topk(1)
            token = top.squeeze(-1).detach()
        return F.log_softmax(torch.cat(outputs, dim=1), dim=-1)


class GCN(nn.Module):
    """pytorch/examples' GCN: ``torch.spmm(adj, x @ W)`` with a sparse normalised adjacency, two layers."""

    def __init__(self, features: int = 8, hidden: int = 16, classes: int = 3) -> None:
        super().__init__()
        self.w1, self.w2 = nn.Parameter(torch.randn(features, hidden) * 0.3), nn.Parameter(torch.randn(hidden, classes) * 0.3)
        self.b1, self.b2 = nn.Parameter(torch.zeros(hidden)), nn.Parameter(torch.zeros(classes))

    def forward(self, x, adj):
        h = F.relu(torch.spmm(adj, x @ self.w1) + self.b1)
        return F.log_softmax(torch.spmm(adj, h @ self.w2) + self.b2, dim=1)


def _graph(n: int, g: torch.Generator):
    nodes = 4 * n
    src = torch.randint(0, nodes, (3 * nodes,), generator=g)
    dst = torch.randint(0, nodes, (3 * nodes,), generator=g)
    idx = torch.cat([torch.stack([src, dst]), torch.arange(nodes).repeat(2, 1)], 1)
    adj = torch.sparse_coo_tensor(idx, torch.ones(idx.shape[1]), (nodes, nodes)).coalesce()
    degree = torch.sparse.sum(adj, 1).to_dense()
    adj = torch.sparse_coo_tensor(adj.indices(), adj.values() / degree[adj.indices()[0]], adj.shape).coalesce()
    return torch.randn(nodes, 8, generator=g), adj


class ActorCritic(nn.Module):
    """An actor-critic policy: a shared body, softmax action probabilities and a state value."""

    def __init__(self, obs: int = 8, actions: int = 4) -> None:
        super().__init__()
        self.body = nn.Sequential(nn.Linear(obs, 32), nn.ReLU(), nn.Linear(32, 32), nn.ReLU())
        self.policy, self.value = nn.Linear(32, actions), nn.Linear(32, 1)

    def forward(self, state):
        h = self.body(state)
        return F.softmax(self.policy(h), dim=-1), self.value(h)


CASES = {
    "word_lm_lstm": ("word_language_model RNNModel: [T, N] ids, (h, c) in and out, tied decoder",
                     lambda: (WordLM(), _word_lm_inputs)),
    "word_lm_transformer": ("word_language_model TransformerModel: mask from len(src), pe[:x.size(0)]",
                            lambda: (WordTransformer(), lambda n, g: (torch.randint(0, 50, (12, n), generator=g),))),
    "time_sequence": ("time_sequence_prediction: LSTMCell over input.split(1, dim=1), then its own outputs",
                      lambda: (Sequence(), lambda n, g: (torch.randn(n, 10, generator=g),))),
    "seq2seq_attention": ("seq2seq tutorial: GRU encoder, Bahdanau attention decoder feeding back topk",
                          lambda: (AttnDecoder(), lambda n, g: (torch.randint(0, 30, (n, 6), generator=g),))),
    "gcn_sparse": ("GCN: torch.spmm with a sparse normalised adjacency", lambda: (GCN(), _graph)),
    "actor_critic": ("actor-critic: shared body, softmax policy, value head",
                     lambda: (ActorCritic(), lambda n, g: (torch.randn(n, 8, generator=g),))),
}
